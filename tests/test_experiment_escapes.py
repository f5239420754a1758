"""The escapes experiment: its classification (pure logic, recorded data, each way it can
be wrong), and on the real kernel that the default profile refuses every attempt while
--privileged lets the harmless ones through."""

import json
import os
import subprocess
import sys

import pytest

from labkit.experiments import ExperimentResult, get

escapes = get("escapes")

DOCKER_14 = ["audit_write", "chown", "dac_override", "fowner", "fsetid", "kill", "mknod", "net_bind_service",
             "net_raw", "setfcap", "setgid", "setpcap", "setuid", "sys_chroot"]
CONTAINER = {"seccomp": True, "capabilities": DOCKER_14, "masked_paths": True, "readonly_paths": True,
             "device_control": True, "user_namespace": False, "pid_namespace": True, "pids_limit": True, "vm": False}
DEFENCES = {
    "default": CONTAINER,
    "--cap-add SYS_ADMIN": CONTAINER | {"capabilities": DOCKER_14 + ["sys_admin"]},
    "seccomp=unconfined": CONTAINER | {"seccomp": False},
    "--privileged": CONTAINER | {"seccomp": False, "capabilities": ["sys_admin", "sys_time", *DOCKER_14],
                                 "masked_paths": False, "readonly_paths": False, "device_control": False},
    "--userns": CONTAINER | {"user_namespace": True},
    "VM": escapes.VM_DEFENCES,
}
# What this kernel answered (recorded on v1 here; the same in the cgroup-v2 VM).
R = {"keyring": "EPERM", "user_namespace": "EPERM", "mount": "EPERM", "kernel_setting": "EROFS",
     "remount_kernel_settings": "EPERM", "masked_file": "masked", "block_device": "EPERM", "kmsg": "EPERM",
     "host_process": "ESRCH", "fork_past_pids_limit": "EAGAIN"}
OUTCOMES = {
    "default": dict(R),
    "--cap-add SYS_ADMIN": R | {"user_namespace": "ok", "mount": "ok", "remount_kernel_settings": "ok"},
    "seccomp=unconfined": R | {"keyring": "ok", "user_namespace": "ok"},
    "--privileged": R | {"keyring": "ok", "user_namespace": "ok", "mount": "ok", "kernel_setting": "ok",
                         "remount_kernel_settings": "ok", "masked_file": "ok", "block_device": "ENXIO", "kmsg": "ok"},
    "--userns": R | {"block_device": "mknod: EPERM", "kmsg": "mknod: EPERM"},
    "VM": {name: "ok" for name in R} | {"block_device": "ENXIO", "host_process": "ESRCH"},
}


def escapes_data(changed=None):
    """Recorded data of a run that bears the claim out, with `changed` = {(profile,
    attempt): outcome} replacing what the kernel answered."""
    outcomes = json.loads(json.dumps(OUTCOMES))
    for (profile, attempt), outcome in (changed or {}).items():
        outcomes[profile][attempt] = outcome
    return {"outcomes": outcomes, "defences": DEFENCES, "vm_skipped": None, "skipped_profiles": {}}


def recorded(data):
    return ExperimentResult("escapes", escapes.Params().__dict__, data)


def label(result, attempt, profile):
    return next(v.label for v in escapes.verdicts(result) if (v.attempt, v.profile) == (attempt, profile))


def test_the_recorded_run_holds_and_names_each_layer():
    result = recorded(escapes_data())
    assert escapes.check(result).held is True
    assert label(result, "mount", "default") == "seccomp"              # seccomp answers before the capability
    assert label(result, "mount", "seccomp=unconfined") == "capability"
    assert label(result, "mount", "--cap-add SYS_ADMIN") == "through"
    assert label(result, "remount_kernel_settings", "--cap-add SYS_ADMIN") == "through"
    assert label(result, "kmsg", "--userns") == "namespace"            # mknod already refused
    assert label(result, "kmsg", "default") == "device control"
    assert label(result, "host_process", "--privileged") == "namespace"
    assert label(result, "host_process", "VM") == "separate kernel"
    assert label(result, "fork_past_pids_limit", "--privileged") == "cgroup"
    assert label(result, "block_device", "--privileged") == "through"  # ENXIO: the block layer was reached


@pytest.mark.parametrize("cell, outcome, says", [
    (("default", "keyring"), "ok", "keyring under default: saw 'ok', expected seccomp's answer"),
    (("--userns", "keyring"), "ok", "keyring under --userns"),
    (("default", "kernel_setting"), "ok", "kernel_setting got through the default profile"),
    (("default", "block_device"), "ENXIO", "block_device got through the default profile"),
    (("default", "masked_file"), "ok", "masked_file under default"),
    (("default", "mount"), "EROFS", "mount under default: saw 'EROFS'"),          # refused, by the wrong layer
    (("seccomp=unconfined", "mount"), "ok", "mount under seccomp=unconfined"),   # the capability missed
    (("--userns", "kmsg"), "EPERM", "kmsg under --userns"),                      # mknod should have failed first
    (("default", "fork_past_pids_limit"), "ok", "fork_past_pids_limit under default"),
    (("--privileged", "kmsg"), "EPERM", "kmsg under --privileged: saw 'EPERM', expected it to get through"),
    (("--cap-add SYS_ADMIN", "user_namespace"), "EPERM", "user_namespace under --cap-add SYS_ADMIN"),
    (("VM", "host_process"), "ok", "host_process under VM"),
    (("VM", "keyring"), "EPERM", "keyring under VM"),
])
def test_a_cell_that_contradicts_its_walls_fails_the_check(cell, outcome, says):
    result = recorded(escapes_data({cell: outcome}))
    verdict = escapes.check(result)
    assert verdict.held is False and says in verdict.detail
    assert label(result, cell[1], cell[0]).startswith("UNEXPECTED")


def test_a_default_profile_that_lost_a_wall_fails_even_though_its_plan_predicts_it():
    data = escapes_data({("default", "keyring"): "ok", ("default", "user_namespace"): "ok"})
    data["defences"] = DEFENCES | {"default": CONTAINER | {"seccomp": False}}
    result = recorded(data)
    assert label(result, "keyring", "default") == "through"
    verdict = escapes.check(result)
    assert verdict.held is False
    assert verdict.detail == "keyring got through the default profile; user_namespace got through the default profile"


def test_the_table_and_figure_come_from_the_data_alone():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = ExperimentResult.from_dict(json.loads(recorded(escapes_data()).to_json()))
    lines = escapes.table(result).splitlines()
    assert lines[0].split() == ["attempt", "default", "--cap-add", "SYS_ADMIN", "seccomp=unconfined",
                                "--privileged", "--userns", "VM"]
    assert lines[3].split() == ["mount", "seccomp", "through", "capability", "through", "seccomp", "through"]
    figure = escapes.plot(result)
    assert len(figure.axes[0].patches) == len(escapes.ATTEMPTS) * len(OUTCOMES)
    plt.close(figure)


def test_every_attempt_is_a_function_of_the_probe_file():
    import ast

    functions = {node.name for node in ast.parse(escapes.probe_program()).body if isinstance(node, ast.FunctionDef)}
    assert set(escapes.BY_NAME) <= functions


def test_the_probe_is_a_program_of_its_own_on_the_standard_library():
    """Run as the container runs it (`python -c` its text), isolated from site-packages
    and labkit: the one attempt harmless anywhere, signal 0 to a process that is there."""
    arguments = json.dumps({"attempts": ["host_process"], "host_pid": os.getpid(), "forks": 1,
                            "mark": escapes.PROBE_MARK})
    done = subprocess.run([sys.executable, "-I", "-S", "-c", escapes.probe_program(), arguments],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert escapes._parse(done.stdout, "the probe on the host") == {"host_process": "ok"}


def test_unknown_attempts_or_profiles_are_refused_by_name():
    with pytest.raises(ValueError, match="'--cap-add NET_ADMIN'.*profiles are default"):
        escapes.run(escapes.Params(profiles=("default", "--cap-add NET_ADMIN"), vm=False))


# --- the real kernel ---------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.cgroup_v2
def test_the_default_profile_refuses_every_attempt_and_privileged_lets_the_harmless_ones_through(no_leftovers):
    result = escapes.run(escapes.Params(profiles=("default", "--privileged"), vm=False))
    cells = {(v.profile, v.attempt): v for v in escapes.verdicts(result)}
    for attempt in escapes.BY_NAME:
        refused = cells["default", attempt]
        assert refused.stopped_by is not None and refused.expected, refused
    through = {attempt for attempt in escapes.BY_NAME if cells["--privileged", attempt].stopped_by is None}
    # Namespaces and cgroup limits stay even with --privileged; everything else falls.
    assert through == set(escapes.BY_NAME) - {"host_process", "fork_past_pids_limit"}
    assert all(cells["--privileged", a].expected for a in escapes.BY_NAME)
    assert escapes.check(result).held is True, escapes.check(result).detail


@pytest.mark.root
def test_labkit_experiment_run_escapes_writes_a_held_result(labkit_home, tmp_path):
    run = subprocess.run([sys.executable, "-m", "labkit.cli", "experiment", "run", "escapes", "--out", str(tmp_path),
                          "-p", "vm=false", "-p", "profiles=default,--userns"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads((tmp_path / "escapes" / "results.json").read_text())
    assert record["check"]["status"] == "held", record["check"]["detail"]
    assert set(record["data"]["outcomes"]) == {"default", "--userns"}
    assert (tmp_path / "escapes" / "escapes.png").stat().st_size > 0
