"""Run experiments into result directories, and redraw figures from them.

    OUT/<name>/results.json       parameters, raw data, the check's outcome
    OUT/<name>/environment.json   kernel, cgroups, CPU, memory, Python, labkit commit, time
    OUT/<name>/<name>.png         the figure, drawn from results.json alone
"""

import json
import traceback
from pathlib import Path

from labkit.experiments import get
from labkit.experiments.base import Check, ExperimentResult, parse_params, text_progress
from labkit.experiments.environment import environment

RESULTS, ENVIRONMENT = "results.json", "environment.json"


def run_experiment(name: str, out, overrides: dict | None = None, trials: int | None = None,
                   progress=None) -> dict:
    """Run one experiment into out/<name>/; returns what results.json holds."""
    module = get(name)
    params = parse_params(module.Params, overrides or {}, trials)
    directory = Path(out) / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ENVIRONMENT).write_text(json.dumps(environment(), indent=2) + "\n")
    try:
        result = module.run(params, progress=progress or text_progress(name))
    except Exception as error:   # recorded, not hidden: the other experiments still run
        record = {"experiment": name, "params": params.__dict__, "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc(),
                  "check": {"claim": "", "held": False, "status": "error", "detail": str(error)}}
        (directory / RESULTS).write_text(json.dumps(record, indent=2) + "\n")
        return record
    check = module.check(result)
    record = result.to_dict() | {"check": check.to_dict()}
    (directory / RESULTS).write_text(json.dumps(record, indent=2) + "\n")
    draw(directory, result, module)
    return record


def load(directory) -> ExperimentResult:
    return ExperimentResult.from_dict(json.loads((Path(directory) / RESULTS).read_text()))


def draw(directory, result=None, module=None) -> Path:
    """Write <name>.png from the result (read from results.json unless given)."""
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")   # a terminal or CI: draw into files, never open a window
    import matplotlib.pyplot as plt

    result = result or load(directory)
    module = module or get(result.experiment)
    figure = module.plot(result)
    path = Path(directory) / f"{result.experiment}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_all(directory) -> list:
    """Redraw every figure under `directory` (one result directory, or a run of several)."""
    directory = Path(directory)
    found = [directory] if (directory / RESULTS).exists() else sorted(p.parent for p in directory.glob(f"*/{RESULTS}"))
    if not found:
        raise FileNotFoundError(f"no {RESULTS} in {directory} or its subdirectories; "
                                "run `labkit experiment run NAME --out DIR` first")
    drawn = []
    for result_dir in found:
        record = json.loads((result_dir / RESULTS).read_text())
        if "error" not in record:
            drawn.append(draw(result_dir))
    return drawn


def recheck(directory) -> Check:
    """The check again, from the stored data (e.g. after changing a tolerance)."""
    result = load(directory)
    return get(result.experiment).check(result)
