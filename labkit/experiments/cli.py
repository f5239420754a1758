"""`labkit experiment list | run NAME… [-p key=value] [--trials N] [--out DIR] | run --all | plot DIR`"""


from labkit.errors import ConfigError
from labkit.units import parse_assignments


def add_subcommand(subparsers):
    parser = subparsers.add_parser("experiment", help="run isolation experiments; figures and raw data")
    verbs = parser.add_subparsers(dest="experiment_verb", metavar="VERB")
    verbs.required = True

    verbs.add_parser("list", help="the experiments and their parameters").set_defaults(func=cmd_list)

    run = verbs.add_parser("run", help="run experiments, write results.json, environment.json and figures")
    run.add_argument("names", nargs="*", metavar="NAME")
    run.add_argument("--all", action="store_true", help="every experiment, in the order of the story")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="set a parameter (repeatable); tuples as 1,2,4")
    run.add_argument("--trials", type=int, help="trials per measurement")
    run.add_argument("--out", default="experiment-results", help="directory for the results (default: %(default)s)")
    run.set_defaults(func=cmd_run)

    plot = verbs.add_parser("plot", help="redraw figures from a results directory without running again")
    plot.add_argument("directory")
    plot.set_defaults(func=cmd_plot)


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


def _params_of(name) -> set:
    import dataclasses

    from labkit.experiments import get

    try:
        return {f.name for f in dataclasses.fields(get(name).Params)}
    except ValueError as error:
        raise ConfigError(str(error)) from None
