"""The notebooks as an ordinary user (issue 20), on this host's real kernel: strict nbval
passes rootless, against each cell's own rootless outputs where they differ from root's
(notebooks/conftest.py swaps them in); the limits notebooks run without an error and say why
their limits are off where the host delegates none (cgroup v1).

As root the module makes a throw-away user (tests/throwaway_users.py) with a 0700 home and an
/etc/subuid range, copies notebooks/ there and runs them with the class environment
(.venv/class); the user and all it left are removed afterwards."""

import os
import re

import nbformat
import pytest
from rootless_notebooks import LAB, notebooks_as_user, user_patterns, why_not

from labkit.cgroups import detect_mode

STRICT = ["00-start-here.ipynb", "01-namespaces.ipynb", "02-pid-and-mount.ipynb", "03-network.ipynb",
          "06-union-fs-and-layers.ipynb", LAB + "01-namespaces-lab.ipynb", LAB + "03-images-lab.ipynb",
          LAB + "04-network-lab.ipynb"]
LIMITS = ["04-cgroups-memory.ipynb", "05-cgroups-cpu-and-pids.ipynb"]


@pytest.fixture(scope="module")
def as_user():
    why = why_not()
    if why:
        pytest.skip(why)
    with notebooks_as_user() as run:
        yield run


def test_the_users_own_ids_and_cgroup_become_placeholders():
    text = "0 4321 1\n 1 3200065536 65536\nfrom the host: /user.slice/user-4321.slice/session-7.scope\n43210 14321 4321.5"
    for regex, replace in user_patterns(4321, "no-such-user-here", cgroup="/user.slice/user-4321.slice/session-7.scope"):
        text = re.sub(regex, replace, text)
    # (no such user: no range start to replace; other numbers holding the uid's digits stay)
    assert text == "0 USER-UID 1\n 1 3200065536 65536\nfrom the host: USER-CGROUP\n43210 14321 4321.5"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("notebook", STRICT)
def test_strict_nbval_passes_rootless(as_user, notebook):
    done = as_user.nbval(notebook)
    assert done.returncode == 0, f"strict nbval of {notebook} as {as_user.user.name}:\n{done.stdout[-20000:]}"
    assert " passed" in done.stdout and " failed" not in done.stdout


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("notebook", LIMITS)
def test_limits_notebooks_run_rootless_and_say_why_limits_are_off(as_user, notebook):
    executed = as_user.execute(notebook)
    errors = [(index, output.get("ename"), output.get("evalue")) for index, cell in enumerate(executed.cells)
              if cell.cell_type == "code" for output in cell.outputs if output.output_type == "error"]
    assert errors == [], f"{notebook} raised rootless: {errors}"
    stderr = "".join(output.text for cell in executed.cells if cell.cell_type == "code"
                     for output in cell.outputs if output.output_type == "stream" and output.name == "stderr")
    if detect_mode() == "v1":
        assert "is not enforced" in stderr and "cgroup v1, which delegates nothing to ordinary users" in stderr, \
            f"{notebook} did not say why its limits are off:\n{stderr[-3000:]}"


# --- in the cgroup v2 VM: limits hold for an ordinary user with a delegated subtree ------

DELEGATED = [*LIMITS, LAB + "02-cgroups-lab.ipynb"]


@pytest.fixture(scope="module")
def as_delegated_user(cgroup_v2_host):
    why = why_not()
    if why:
        pytest.skip(why)
    with notebooks_as_user(delegated=True) as run:
        yield run


def texts(executed):
    """Every code cell's outputs as text: streams, and each data output's text/plain."""
    for index, cell in enumerate(executed.cells):
        if cell.cell_type == "code":
            for output in cell.outputs:
                text = output.get("text") or output.get("data", {}).get("text/plain", "")
                yield index, output, "".join(text) if isinstance(text, list) else text


def limits_seen_holding(notebook, executed) -> list:
    """What in the executed `notebook` shows its limits were not enforced (empty: they held)."""
    from labkit.grading.checks import MIME

    problems = []
    for index, output, text in texts(executed):
        if output.output_type == "error":
            problems.append(f"cell {index} raised {output.ename}: {output.evalue}")
        for line in text.splitlines():
            if "is not enforced" in line or "limits are off" in line:
                problems.append(f"cell {index}: {line}")
        graded = output.get("data", {}).get(MIME)
        if graded and graded["score"] != graded["max_score"]:
            problems.append(f"cell {index}: {graded['cell']} scored {graded['score']} of {graded['max_score']}: "
                            + "; ".join(f"{c['name']}: {c['observed']}" for c in graded["checks"] if not c["passed"]))
    shown = "\n".join(text for _, _, text in texts(executed))
    # What each notebook shows only where a limit held: an OOM kill, a fork bomb held, a quota kept.
    expected = {"04-cgroups-memory.ipynb": ["OOM kills the cgroup counted: 1", "OOM-killed: True", "within the limit: True",
                                           "verdict: held"],
                "05-cgroups-cpu-and-pids.ipynb": ["max 1", "a quota missed on this run: False", "pids.max: 5",
                                                  "verdict: held"],
                LAB + "02-cgroups-lab.ipynb": ["10 of 10 checks passed, 13 of 13 points in 5 exercise(s) run"]}[notebook]
    problems += [f"no line shows {line!r}" for line in expected if line not in shown]
    return problems


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("notebook", DELEGATED)
def test_limits_hold_in_the_notebooks_as_a_user_with_a_delegated_subtree(as_delegated_user, notebook):
    """Issue 20's done-when on cgroup v2 (.ci/v2-lane runs this inside its VM; elsewhere it
    skips): an ordinary user whose session has a delegated subtree runs 04, 05 and the cgroups
    lab with every limit enforced, with no cell raising and no line saying a limit is off."""
    executed = as_delegated_user.execute(notebook)
    keep = os.environ.get("LABKIT_ROOTLESS_EXECUTED")   # .ci/v2-lane: out/v2-rootless-notebooks/
    if keep:    # the user's copy goes with its home: this one stays to be read after a failure
        os.makedirs(keep, exist_ok=True)
        nbformat.write(executed, os.path.join(keep, os.path.basename(notebook)))
    assert limits_seen_holding(notebook, executed) == [], f"{notebook} as {as_delegated_user.user.name}"


def test_a_limit_off_an_error_or_a_lost_point_fails_the_delegated_run():
    """What the v2 lane's check catches, on outputs as rootless v1 and a half-scored lab print them."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from labkit.grading.checks import MIME

    def notebook(*outputs):
        return new_notebook(cells=[new_code_cell("", outputs=[output]) for output in outputs])

    held = notebook(new_output("stream", name="stdout", text="OOM kills the cgroup counted: 1\n"),
                    new_output("stream", name="stdout", text="OOM-killed: True\nwithin the limit: True\n"),
                    new_output("stream", name="stdout", text="verdict: held\n"))
    assert limits_seen_holding("04-cgroups-memory.ipynb", held) == []
    off = notebook(new_output("stream", name="stderr", text="labkit: --memory 16 MiB is not enforced: ...\n"),
                   new_output("error", ename="HostError", evalue="no limit", traceback=[]),
                   new_output("stream", name="stdout", text="the fork bomb runs only inside a pids limit, and here "
                                                            "limits are off: cgroup v1\n"))
    problems = limits_seen_holding("05-cgroups-cpu-and-pids.ipynb", off)
    assert [p.split(":")[0] for p in problems[:4]] == ["cell 0", "cell 1 raised HostError", "cell 2", "no line shows 'max 1'"]
    half = notebook(new_output("execute_result", data={MIME: {"cell": "oom", "score": 1.0, "max_score": 3.0, "checks": [
        {"name": "big was OOM-killed", "observed": "no OOM kill", "passed": False}]}, "text/plain": "10 of 10 checks passed, 13 of 13 points in 5 exercise(s) run"}))
    assert limits_seen_holding(LAB + "02-cgroups-lab.ipynb", half) == \
        ["cell 0: oom scored 1.0 of 3.0: big was OOM-killed: no OOM kill"]
