"""`make benchmarks` end to end with tiny counts: benchmarks/table.py --quick prints
every row of issue 13's table and writes the raw samples and the environment record.
It checks that the table can be produced, never how fast anything is. And the crun
worker's one intrusive step (unmounting the hybrid host's cgroup2, which crun refuses)
stays inside its own mount namespace."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TABLE = Path(__file__).resolve().parent.parent / "benchmarks" / "table.py"
ROWS = ("container start → exit", "start → exit, pool off", "start → exit, `--privileged`",
        "request → exec / → cleaned", "the same with the disk busy", "`labkit run -- true`, whole process", "`labkit run`, pool off",
        "`labkit --help`", "6 containers, sequential",
        "2×3 concurrent, two clients", "`%%container true` cell round trip", "8 MiB commit, container kept")

pytestmark = pytest.mark.root


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed (the benchmarks' baseline: "
                                                           "apt-get install crun)")
def test_the_table_prints_every_row_and_keeps_its_samples_and_environment(tmp_path):
    done = subprocess.run([sys.executable, str(TABLE), "--quick", "--no-install", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for what in ROWS:
        matching = [line for line in table if what in line.split("|")[1]]
        assert len(matching) == 1, f"no row {what!r} in:\n{done.stdout}"
        assert "failed" not in matching[0] and matching[0].rstrip(" |").endswith(("met", "—")), matching[0]
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert environment["cpus"] >= 1 and environment["kernel"] and environment["cgroup"].startswith(("v1", "v2"))
    assert len(environment["load_average_before"]) == len(environment["load_average_after"]) == 3
    assert environment["crun"] and environment["python"] == sys.version.split()[0]
    startup = json.loads((tmp_path / "startup.json").read_text())
    assert len(startup["phases"]["labkit"]["exit"]["samples_s"]) == 3
    if shutil.which("stress-ng"):   # else the row says it was not measured, and why (--no-install)
        assert len(startup["disk_busy"]["labkit"]["exit"]["samples_s"]) == 3
    assert len(startup["batches"]["runs"]["labkit concurrent"]["wall_s"]) == 1
    assert json.loads((tmp_path / "table.json").read_text())["rows"]
    again = subprocess.run([sys.executable, str(TABLE), "--from", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == done.stdout  # the table is drawn from the data alone


HYBRID_CGROUP2 = "/sys/fs/cgroup/unified"
TIMING = TABLE.parent / "timing.py"


@pytest.mark.skipif(not os.path.ismount(HYBRID_CGROUP2), reason="not a hybrid cgroup host (no cgroup2 at "
                                                                   "/sys/fs/cgroup/unified to hide from crun)")
def test_the_crun_worker_hides_cgroup2_only_in_its_own_mount_namespace():
    request = json.dumps({"argv": ["findmnt", "--noheadings", HYBRID_CGROUP2]}) + "\n"
    refused = subprocess.run([sys.executable, str(TIMING), "--serve-commands"], input=request,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "not in a private mount namespace" in refused.stderr
    assert refused.stdout == ""

    private = ["unshare", "--mount", "--propagation", "private", sys.executable, str(TIMING), "--serve-commands"]
    answered = subprocess.run(private, input=request, capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
    # Inside, findmnt no longer finds the mount (it exits 1: the worker reports a failure) ...
    assert "findmnt" in json.loads(answered.stdout)["error"]
    # ... and the host still has it.
    assert os.path.ismount(HYBRID_CGROUP2)


def test_the_cli_benchmark_writes_each_checkouts_bytecode_before_it_times_it(tmp_path):
    """With PYTHONDONTWRITEBYTECODE set, a checkout without bytecode (a fresh one given to
    --before, or sources changed since the last import) compiles its modules in every
    timed run, and `after ÷ before` measures that: benchmarks/cli.py compiles both first."""
    package = tmp_path / "labkit"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    done = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import cli; "
                           "cli.compile_bytecode(sys.argv[2])", str(TABLE.parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert done.returncode == 0, done.stderr
    assert [path.name.split(".")[0] for path in (package / "__pycache__").iterdir()] == ["__init__"]


BURNER = """
import os, sys, time
child = os.fork()
if child == 0:
    end = time.process_time() + 0.4
    while time.process_time() < end:
        pass
    os.close(1)
    time.sleep(30)
    os._exit(0)
time.sleep(1.5)   # the child has burnt its CPU, and lives on unreaped
print("burnt", child, flush=True)
os.waitpid(child, 0)
"""


def test_the_helpers_cpu_counts_the_children_it_still_has():
    """A live child's CPU (the janitor, a ready slot) is the stream's too: counted, where
    /proc/PID/stat's cutime counts only the reaped."""
    sys.path.insert(0, str(TABLE.parent))
    try:
        from startup import _cpu_ticks, helper_cpu_seconds
    finally:
        sys.path.remove(str(TABLE.parent))
    parent = subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        said, child = parent.stdout.readline().split()
        assert said == "burnt"
        own = _cpu_ticks(parent.pid) / os.sysconf("SC_CLK_TCK")   # what the old count saw
        assert helper_cpu_seconds(parent.pid) - own >= 0.3
    finally:
        if child is not None:
            os.kill(int(child), signal.SIGKILL)   # the parent reaps it and exits
        parent.wait(timeout=30)
