"""Experiments: each check() on recorded data that should pass and data that should fail
(pure logic, no root), figures drawn from data alone, and the whole runner on this kernel."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leak_checks import own_temp_root, remove_temp_root
from labkit.experiments import NAMES, ExperimentResult, get
from labkit.experiments.base import parse_params

MIB = 1 << 20


def recorded(name, data, **params):
    module = get(name)
    defaults = module.Params().__dict__ | params
    return ExperimentResult(name, defaults, data)


# --- recorded data: one shape per experiment, good or bad by a flag --------------------

def tour_data(user_isolated_by_default=False):
    host = {kind: 100 + i for i, kind in enumerate(["mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time"])}
    trial = {}
    for setup, extra in (("default", ()), ("--userns", ("user",)), ("--timens", ("time",))):
        isolated = {"mnt", "uts", "ipc", "pid", "net", "cgroup", *extra}
        if user_isolated_by_default and setup == "default":
            isolated.add("user")
        trial[setup] = {kind: {"inside": inode + 1000 if kind in isolated else inode,
                               "outside": inode + 1000 if kind in isolated else inode} for kind, inode in host.items()}
    table = [{"kind": k, "flag": "CLONE_NEW" + k.upper(), "isolates": "x", "first_kernel": "1", "available": True,
              "why_not": None} for k in host]
    return {"table": table, "host": host, "trials": [trial], "skipped_setups": {}}


def cost_data(net=600.0):
    base = {"unshare(0)": 1.0, "mnt": 35, "uts": 10, "ipc": 43, "pid": 14, "net": net, "user": 16, "cgroup": 7, "time": 9}
    return {"microseconds": {k: [v * f for f in (0.9, 1.0, 1.1)] for k, v in base.items()}, "not_available": {}}


def pid_data(shifted=False):
    inside = [{"pid": 1, "ppid": 0, "name": "sh"}, {"pid": 2, "ppid": 1, "name": "sleep"}]
    host = [{"pid": 500, "ppid": 499, "name": "sh", "nspid": [500, 1]},
            {"pid": 501, "ppid": 500, "name": "sleep", "nspid": [501, 3 if shifted else 2]}]
    return {"trials": [{"inside": inside, "host": host, "pid1_on_host": 500}]}


def memory_data(over=False, killed=True, sampled_over=False):
    limit = 32 * MIB
    peak = limit + 4096 if over else limit - 4096
    top = limit + 4096 if sampled_over else peak
    samples = [[0.1 * i, min(i * 2 * MIB, top)] for i in range(18)]
    trial = {"samples": samples, "oom_killed": killed, "cause": "OOM-killed" if killed else "exited 0",
             "memory_peak": peak, "oom_kills": int(killed), "seconds": 1.8}
    return {"limit_bytes": limit, "trials": [trial, trial]}


TOLERANCE = 0.10
ALIGNMENT = 0.1 / 0.8   # one 100 ms period's quota in a 0.8 s window


def cpu_data(quota=0.5, achieved=None, idle=0.0, throttled=8, periods=8):
    """Quotas 0.1, 0.5 and 1.0 on a 2-CPU host, each got exactly its quota over the 8 periods
    the kernel counted and ran out of it in every one, except the one at `quota`, which got
    `achieved` cores over `periods` periods, ran out of quota in `throttled` of them, with
    `idle` CPUs idle in its window."""
    rows = []
    for each in (0.1, 0.5, 1.0):
        mine = each == quota
        got = achieved if mine and achieved is not None else each
        counted = periods if mine else 8
        rows.append({"trial": 1, "quota": each, "wall_seconds": 0.8, "cpu_seconds": got * counted * 0.1,
                     "periods": counted, "throttled_periods": throttled if mine else 8, "achieved": got,
                     "idle_cores": idle if mine else 2 - each})
    return {"host_cpus": 2, "period_seconds": 0.1, "rows": rows}


JUST = 0.005   # just past a threshold


def pids_data(highest=32, hits=900):
    samples = [[0.01 * i, min(i, highest)] for i in range(60)]
    return {"trials": [{"samples": samples, "limit_hits": hits, "pids_at_end": highest}]}


def overlay_data(flat=False, copied_up=True, second_ms=0.02, idle_cores=None):
    rows = [{"size_mib": s, "first_ms": (1.0 if flat else s * 0.9), "second_ms": second_ms, "copied_up": copied_up}
            for s in (1, 4, 16, 64)]
    lookup = [{"depth": d, "first_us": 3 + (0 if flat else d * 0.3), "again_us": 1.0} for d in (1, 16, 64, 128)]
    trial = {"rows": rows} if idle_cores is None else {"rows": rows, "idle_cores": idle_cores}
    return {"copy_up": [trial], "lookup": lookup}


def versus_data(vm_seconds=3.0, vm_memory=250 * MIB, vm_reason=None):
    rows = {"process": [{"startup_s": 0.002, "memory_bytes": MIB // 4}],
            "container": [{"startup_s": 0.01, "memory_bytes": 2 * MIB}],
            "vm": [] if vm_reason else [{"startup_s": vm_seconds, "memory_bytes": vm_memory, "accel": "tcg",
                                         "kernel": "6.1"}]}
    return {"rows": rows, "vm_skipped": vm_reason}


def network_data(bridge_rate=500, lost=0):
    rows = []
    for trial in (1, 2):
        rows.append({"trial": trial, "path": "loopback", "rtt_ms": [0.012, 0.015], "pings_sent": 2,
                     "send_seconds": 0.1, "mbytes_per_s": 640})
        rows.append({"trial": trial, "path": "bridge", "rtt_ms": [0.030] * (2 - (lost if trial == 1 else 0)),
                     "pings_sent": 2, "send_seconds": 0.2, "mbytes_per_s": bridge_rate})
    return {"rows": rows, "server_ip": "10.213.1.2"}


PASSING = {
    "namespace_tour": tour_data(), "namespace_cost": cost_data(), "pid_view": pid_data(),
    "network": network_data(), "memory_limit": memory_data(), "cpu_quota": cpu_data(),
    "pids_limit": pids_data(), "overlay_copy_up": overlay_data(), "container_vs_vm": versus_data(),
}

# Each criterion of each check, with data just past its threshold, and what the detail
# must then say (so a check that fails for another reason does not pass the test).
FAILING = {
    "a default container that isolated users": ("namespace_tour", tour_data(user_isolated_by_default=True), "user"),
    "a network namespace as cheap as the others": ("namespace_cost", cost_data(net=20.0), "net"),
    "host and container PIDs that do not match": ("pid_view", pid_data(shifted=True), "PID"),
    "one ping over the bridge unanswered": ("network", network_data(lost=1), "1 pings over bridge"),
    "a bridge just under a quarter of loopback": ("network", network_data(bridge_rate=640 * 0.25 - 1), "only 24.8%"),
    "a peak just over the memory limit": ("memory_limit", memory_data(over=True), "over a 32 MiB limit"),
    "a usage sample just over the memory limit": ("memory_limit", memory_data(sampled_over=True),
                                                  "over a 32 MiB limit"),
    "a process that was never OOM-killed": ("memory_limit", memory_data(killed=False), "not OOM-killed"),
    "just over the quota": ("cpu_quota", cpu_data(achieved=0.5 * (1 + TOLERANCE + ALIGNMENT) + JUST),
                            "more than the quota"),
    "just under the quota, out of quota in every period": ("cpu_quota", cpu_data(
        achieved=0.5 * (1 - TOLERANCE - ALIGNMENT) - JUST), "throttled below its quota"),
    "no quota period counted": ("cpu_quota", cpu_data(achieved=1.9, periods=0, throttled=0),
                                "no quota was enforced"),
    "one process over the pids limit": ("pids_limit", pids_data(highest=33), "33 processes over a limit of 32"),
    "one process short of the pids limit": ("pids_limit", pids_data(highest=31), "only reached 31 of 32"),
    "a bomb whose forks were never refused": ("pids_limit", pids_data(hits=0), "no fork was refused"),
    "copy-up that does not grow with size": ("overlay_copy_up", overlay_data(flat=True), "not 2x"),
    "a file opened for writing missing from the read-write layer": ("overlay_copy_up", overlay_data(copied_up=False),
                                                                    "was not in the read-write layer"),
    "a second open for writing as slow as the first": ("overlay_copy_up", overlay_data(second_ms=64 * 0.9 / 2),
                                                       "not clearly slower than the second"),
    "a VM that boots only 9.9x slower": ("container_vs_vm", versus_data(vm_seconds=0.099), "only 9.9x"),
    "a VM charged as little memory as a container": ("container_vs_vm", versus_data(vm_memory=2 * MIB),
                                                     "as much memory"),
}

# escapes keeps its recorded data beside its own tests (tests/test_experiment_escapes.py).
from test_experiment_escapes import escapes_data  # noqa: E402

PASSING["escapes"] = escapes_data()
FAILING["a keyring reached through the default profile"] = ("escapes", escapes_data({("default", "keyring"): "ok"}),
                                                            "keyring got through the default profile")


def test_every_experiment_has_recorded_data_here():
    assert set(PASSING) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_check_holds_on_data_that_bears_the_claim_out(name):
    outcome = get(name).check(recorded(name, PASSING[name]))
    assert outcome.held is True, outcome.detail
    assert outcome.status == "held"
    assert str(outcome).endswith("held: True")


@pytest.mark.parametrize("case", sorted(FAILING))
def test_check_says_so_when_the_claim_did_not_hold(case):
    name, data, reason = FAILING[case]
    outcome = get(name).check(recorded(name, data))
    assert outcome.held is False, outcome.detail
    assert outcome.status == "did not hold"
    assert reason in outcome.detail
    assert str(outcome).endswith("held: False")


FLOOR = 0.5 * (1 - TOLERANCE - ALIGNMENT)


@pytest.mark.parametrize("achieved, throttled, status", [
    (FLOOR + JUST, 8, "held"),                               # just inside the tolerance
    (0.5 * (1 + TOLERANCE + ALIGNMENT) - JUST, 8, "held"),
    (FLOOR - JUST, 6, "inconclusive"),                       # short, and out of quota in only 6 of 8
    (0.3, 0, "inconclusive"),                                # never out of quota: other work had the CPUs
    (FLOOR - JUST, 7, "did not hold"),                       # short, though out of quota in 7 of 8
    (0.3, 8, "did not hold"),
])
def test_cpu_quota_tells_a_busy_host_from_a_miss_by_the_throttled_periods(achieved, throttled, status):
    outcome = get("cpu_quota").check(recorded("cpu_quota", cpu_data(achieved=achieved, throttled=throttled)))
    assert outcome.status == status, outcome.detail


def test_cpu_quota_judges_cpu_time_over_the_kernels_periods_not_the_wall_time_it_read():
    """In an emulated guest the notebook's process may wait between reading the counters and
    its clock: 8 periods of quota read as 1.1 s or 0.6 s of wall time is still the quota."""
    for wall in (1.1, 0.6):
        data = cpu_data()
        for row in data["rows"]:
            row |= {"wall_seconds": wall, "achieved": row["cpu_seconds"] / wall}   # as over wall time
        assert get("cpu_quota").check(recorded("cpu_quota", data)).status == "held"
    data = cpu_data()
    del data["rows"][1]["periods"]            # recorded by an older labkit: not judged
    assert get("cpu_quota").check(recorded("cpu_quota", data)).status == "inconclusive"


def flat_copy_up(idle_cores):
    data = overlay_data(idle_cores=idle_cores)
    for row in data["copy_up"][0]["rows"]:
        row["first_ms"] = 1.0
    return data


@pytest.mark.parametrize("data, status", [
    (flat_copy_up(idle_cores=0.2), "inconclusive"),   # flat times, no CPU to spare: the host's
    (flat_copy_up(idle_cores=1.5), "did not hold"),   # flat times on an idle host: a miss
    (overlay_data(second_ms=64 * 0.9 / 2, idle_cores=0.2), "inconclusive"),
    (overlay_data(copied_up=False, idle_cores=0.2), "did not hold"),   # what was copied is no timing
    (overlay_data(idle_cores=0.2), "held"),
])
def test_overlay_copy_up_tells_a_busy_host_from_a_miss_by_the_idle_cpus(data, status):
    outcome = get("overlay_copy_up").check(recorded("overlay_copy_up", data))
    assert outcome.status == status, outcome.detail


def test_a_busy_host_is_inconclusive_not_held_and_says_so():
    outcome = get("cpu_quota").check(recorded("cpu_quota", cpu_data(achieved=0.3, throttled=2)))
    assert outcome.held is None and not outcome.missed
    assert str(outcome).endswith("inconclusive: the host was busy")
    assert "quota 0.5: got 0.300 cores" in outcome.detail


def test_a_miss_is_not_excused_by_a_busy_point_elsewhere_in_the_run():
    data = cpu_data(achieved=0.3)                                # out of quota in every period
    data["rows"][0] |= {"achieved": 0.05, "cpu_seconds": 0.05 * 0.8, "throttled_periods": 0}   # lost to other work
    outcome = get("cpu_quota").check(recorded("cpu_quota", data))
    assert outcome.status == "did not hold" and "quota 0.5" in outcome.detail


def test_a_throttling_bug_that_slows_every_container_is_a_miss_however_busy_it_makes_the_host_look():
    # The old check measured "capacity" with labkit's own containers, so a bug slowing
    # them all switched its lower bound off. Throttled periods are counted by the kernel instead.
    data = cpu_data()
    for row in data["rows"]:
        row |= {"achieved": row["quota"] / 2, "cpu_seconds": row["quota"] / 2 * 0.8, "idle_cores": 2 - row["quota"] / 2}
    outcome = get("cpu_quota").check(recorded("cpu_quota", data))
    assert outcome.status == "did not hold"
    assert outcome.detail.count("throttled below its quota") == 3


def test_a_host_without_a_vm_skips_the_comparison_with_its_reason():
    outcome = get("container_vs_vm").check(recorded("container_vs_vm", versus_data(vm_reason="qemu is not installed")))
    assert outcome.held is None and outcome.status == "skipped"
    assert "qemu is not installed" in outcome.skipped


def test_a_skipped_experiment_is_skipped_not_held():
    result = recorded("network", {})
    result.skipped = "the bridge network is not available here: no CAP_NET_ADMIN"
    outcome = get("network").check(result)
    assert outcome.status == "skipped" and "CAP_NET_ADMIN" in str(outcome)


@pytest.mark.parametrize("name", NAMES)
def test_figures_are_drawn_from_recorded_data_alone(name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = ExperimentResult.from_dict(json.loads(recorded(name, PASSING[name]).to_json()))
    figure = get(name).plot(result)
    assert figure.axes
    plt.close(figure)


def test_parameters_from_the_command_line_take_the_type_of_their_default():
    params = parse_params(get("cpu_quota").Params, {"quotas": "0.5,1", "seconds": "0.2"}, trials=2)
    assert params.quotas == (0.5, 1.0) and params.seconds == 0.2 and params.trials == 2


def test_an_unknown_parameter_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="has no parameter 'memroy'.*memory"):
        parse_params(get("memory_limit").Params, {"memroy": "64m"})


# --- the runner on the real kernel -------------------------------------------------------

SMALL = ["-p", "megabytes=32", "-p", "pings=20", "-p", "quotas=0.25,0.5,1.0", "-p", "sizes_mib=1,16",
         "-p", "depths=1,64", "-p", "vm_trials=1", "-p", "trials=1"]
ENVIRONMENT_FIELDS = {"kernel_release", "cgroup_mode", "cgroup_controllers", "cpu_model", "cpu_count",
                      "memory_bytes", "python", "labkit_version", "labkit_commit", "time"}


def labkit(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True, **kwargs)


@pytest.mark.root
@pytest.mark.slow
def test_run_all_then_plot_writes_results_environment_and_figures_and_every_check_holds(tmp_path, labkit_home):
    # The VM row needs the guest kernel cached in the default LABKIT_HOME: borrow it.
    default_vm = Path("/var/lib/labkit/vm")
    if default_vm.is_dir():
        (labkit_home / "vm").symlink_to(default_vm)
    out = tmp_path / "results"
    with own_temp_root() as scratch:   # the experiments' scratch dirs: this test's alone to judge
        run = labkit("experiment", "run", "--all", "--out", str(out), *SMALL, timeout=600)
    try:
        assert list(scratch.iterdir()) == [], "scratch left behind"
    finally:
        remove_temp_root(scratch)
    assert run.returncode in (0, 1), run.stderr

    for name in NAMES:
        directory = out / name
        record = json.loads((directory / "results.json").read_text())
        environment = json.loads((directory / "environment.json").read_text())
        assert ENVIRONMENT_FIELDS <= set(environment), name
        assert environment["kernel_release"] == os.uname().release
        check = record["check"]
        if check["status"] == "skipped":
            assert check["skipped"], f"{name} skipped without a reason"
            continue
        if check["status"] == "inconclusive":   # other work on the host took the CPUs
            assert check["inconclusive"] and check["detail"], name
            continue
        assert check["status"] == "held", f"{name}: {check['detail']}"
        assert (directory / f"{name}.png").stat().st_size > 0
    assert run.returncode == 0, run.stdout

    for png in out.glob("*/*.png"):
        png.unlink()
    plot = labkit("experiment", "plot", str(out), timeout=120)
    assert plot.returncode == 0, plot.stderr
    drawn = {Path(line).name for line in plot.stdout.split()}
    assert drawn == {f"{name}.png" for name in NAMES}

    assert not list((labkit_home / "containers").glob("*")), "containers left behind"


# --- what is a skip and what is not --------------------------------------------------------

def failing_to_start(error):
    import contextlib

    @contextlib.contextmanager
    def running(**fields):
        raise error
        yield
    return running


def test_network_skips_only_when_the_host_lacks_the_bridge(monkeypatch):
    from labkit.errors import HostError
    from labkit.experiments import network

    monkeypatch.setattr(network, "running", failing_to_start(HostError("no CAP_NET_ADMIN")))
    result = network.run(network.Params(trials=1))
    assert result.skipped and "no CAP_NET_ADMIN" in result.skipped


def test_network_does_not_turn_a_failure_inside_the_containers_into_a_skip(monkeypatch):
    from labkit.errors import ContainerError
    from labkit.experiments import network

    monkeypatch.setattr(network, "running", failing_to_start(ContainerError("ping: sendto: Network unreachable")))
    with pytest.raises(ContainerError, match="Network unreachable"):
        network.run(network.Params(trials=1))


@pytest.mark.root
def test_a_process_is_charged_its_own_memory_not_the_memory_of_whoever_started_it():
    from labkit.experiments.container_vs_vm import in_own_cgroup

    ballast = bytearray(64 * MIB)              # the launcher holds far more than `true` needs
    ballast[::4096] = b"\1" * (len(ballast) // 4096)
    _, charged = in_own_cgroup(["/bin/true"], timeout=30)
    assert 0 < charged < 8 * MIB
    # The old metric, a spawned child's peak RSS, counts the launcher's pages it shared
    # until exec: that is what made a process look 80x larger than a container.
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    _, _, usage = os.wait4(pid, 0)
    assert usage.ru_maxrss * 1024 > 64 * MIB
    del ballast
