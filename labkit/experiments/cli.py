"""`labkit experiment list | run NAME… [-p key=value] [--trials N] [--out DIR] | run --all | plot DIR`"""

from labkit.errors import ConfigError
from labkit.units import parse_assignments
from labkit.verbs import Verb, add_verbs, option


def cmd_list(options):
    import dataclasses

    from labkit.experiments import NAMES, get

    for name in NAMES:
        module = get(name)
        summary = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(module.Params))
        print(f"{name}\n    {summary}\n    parameters: {params}")
    return 0


def cmd_run(options):
    from labkit.experiments import NAMES
    from labkit.experiments.runner import run_experiment

    names = list(NAMES) if options.all else options.names
    if not names:
        raise ConfigError("name an experiment (labkit experiment list) or pass --all")
    overrides = parse_assignments(options.param, "parameter")
    worst = 0
    for name in names:
        module_params = _params_of(name)
        mine = {k: v for k, v in overrides.items() if k in module_params or not options.all}
        try:
            record = run_experiment(name, options.out, mine, options.trials if "trials" in module_params else None)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        check = record["check"]
        print(f"{name}: {check['status']}" + (f" — {check['detail']}" if check.get("detail") else ""))
        if check["status"] in ("did not hold", "error"):
            worst = 1
    print(f"results in {options.out}/")
    return worst


def cmd_plot(options):
    from labkit.experiments.runner import plot_all

    try:
        drawn = plot_all(options.directory)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    for path in drawn:
        print(path)
    return 0


VERBS = (
    Verb("experiment", "run isolation experiments; figures and raw data", verbs=(
        Verb("list", "the experiments and their parameters", cmd_list),
        Verb("run", "run experiments, write results.json, environment.json and figures", cmd_run, (
            option("names", nargs="*", metavar="NAME"),
            option("--all", action="store_true", help="every experiment, in the order of the story"),
            option("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="set a parameter (repeatable); tuples as 1,2,4"),
            option("--trials", type=int, help="trials per measurement"),
            option("--out", default="experiment-results", help="directory for the results (default: %(default)s)"),
        )),
        Verb("plot", "redraw figures from a results directory without running again", cmd_plot,
             (option("directory"),)),
    )),
)


def add_subcommand(subparsers):
    add_verbs(subparsers, VERBS)


def _params_of(name) -> set:
    import dataclasses

    from labkit.experiments import get

    try:
        return {f.name for f in dataclasses.fields(get(name).Params)}
    except ValueError as error:
        raise ConfigError(str(error)) from None
