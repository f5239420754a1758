"""Cgroup limits without root: an ordinary user's limits hold in the cgroup v2 subtree
delegated to them, and where there is none (every cgroup v1 host, like these machines) a
container runs without limits and each limit asked for says so in one line naming the fix.

The first tests are pure logic on a directory tree laid out as cgroupfs is; the last run
as real throw-away users: here (v1: no delegation) and in the cgroup v2 VM of
`.ci/v2-lane`, where the test delegates a subtree to the user as systemd's
`Delegate=yes` does."""

import os
import shutil
import tempfile
import textwrap

import pytest

from labkit.cgroups import Limits, NoCgroups
from labkit.cgroups.delegation import (
    FIX, DelegatedHierarchy, enforceable, find_delegation, limits_off_lines,
    own_cgroup, rootless_hierarchy,
)

SESSION = "/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service"


def cgroupfs(tmp_path, path, controllers="cpu memory pids"):
    """Directories of `path` below a fake mount, each with the files that matter here."""
    mount = tmp_path / "cgroup"
    directory = mount
    for part in path.strip("/").split("/"):
        directory = directory / part
        directory.mkdir(parents=True)
        for name in ("cgroup.procs", "cgroup.subtree_control"):
            (directory / name).write_text("")
        (directory / "cgroup.controllers").write_text(controllers + "\n")
    return str(mount)


def owned_below(mount, top):
    """The ownership test of a host where systemd handed `top` and everything below to us."""
    return lambda path: path == mount + top or path.startswith(mount + top + "/")


def test_own_cgroup_is_the_unified_line_of_proc_self_cgroup():
    hybrid = f"12:pids:/user.slice\n1:name=systemd:/user.slice\n0::{SESSION}\n"
    assert own_cgroup(hybrid) == SESSION
    assert own_cgroup("12:pids:/\n1:name=systemd:/\n") is None


def test_the_delegation_is_the_highest_cgroup_the_user_owns(tmp_path):
    mount = cgroupfs(tmp_path, SESSION)
    top = "/user.slice/user-1000.slice/user@1000.service"
    delegation = find_delegation(mount, SESSION, owned_below(mount, top), unified=True)
    assert delegation.root == mount + top
    assert delegation.controllers == {"cpu", "memory", "pids"}
    assert delegation.why_not == ""


def test_a_directory_owned_without_its_procs_file_is_not_delegated(tmp_path):
    """chown of the directory alone lets a user make children but not move processes: the
    climb stops below it."""
    mount = cgroupfs(tmp_path, SESSION)
    top = "/user.slice/user-1000.slice/user@1000.service"
    owned = owned_below(mount, top)
    delegation = find_delegation(mount, SESSION, lambda p: owned(p) and p != f"{mount}{top}/cgroup.procs",
                                 unified=True)
    assert delegation.root == f"{mount}{top}/app.slice"


def test_a_cgroup_owned_by_someone_else_is_no_delegation(tmp_path):
    mount = cgroupfs(tmp_path, "/user.slice/user-1000.slice/session-3.scope")
    delegation = find_delegation(mount, "/user.slice/user-1000.slice/session-3.scope", lambda path: False,
                                 unified=True)
    assert delegation.root is None and "session-3.scope" in delegation.why_not
    hierarchy = rootless_hierarchy(delegation)
    assert isinstance(hierarchy, NoCgroups) and hierarchy.controllers == set()
    assert delegation.why_not in hierarchy.reason and FIX in hierarchy.reason


def test_cgroup_v1_delegates_nothing(tmp_path):
    mount = cgroupfs(tmp_path, SESSION)
    delegation = find_delegation(mount, SESSION, lambda path: True, unified=False)
    assert delegation.root is None and "cgroup v1" in delegation.why_not


def test_a_delegated_hierarchy_offers_what_its_parent_gave_and_no_device_rules(tmp_path):
    mount = cgroupfs(tmp_path, SESSION, controllers="memory pids")
    delegation = find_delegation(mount, SESSION, lambda path: True, unified=True)
    hierarchy = rootless_hierarchy(delegation)
    assert isinstance(hierarchy, DelegatedHierarchy)
    assert hierarchy.controllers == {"memory", "pids"}
    assert hierarchy.delegation is delegation


def test_each_limit_that_cannot_hold_says_so_in_one_line_naming_the_fix():
    asked = {"memory": "--memory 64 MiB", "pids": "--pids-limit 20", "cpu": "--cpus 0.5"}
    lines = limits_off_lines(asked, {"pids"}, "")
    assert len(lines) == 2
    assert "--memory 64 MiB is not enforced" in lines[0] and "memory controller is not delegated" in lines[0]
    assert "--cpus 0.5" in lines[1]
    assert all(FIX in line and "\n" not in line for line in lines)
    assert "labkit lab --vm" in FIX and "Delegate=yes" in FIX
    v1 = limits_off_lines(asked, set(), "this host runs cgroup v1, which delegates nothing to ordinary users")
    assert len(v1) == 3 and all("cgroup v1" in line for line in v1)
    assert limits_off_lines({}, set(), "v1") == []


def test_what_cannot_be_enforced_is_dropped_from_the_limits():
    limits = Limits(memory=64 << 20, cpus=0.5, pids=20, io_read_bps={"8:0": 1}, devices=["c 1:3 rwm"])
    kept = enforceable(limits, {"memory", "pids"})
    assert (kept.memory, kept.cpus, kept.pids, kept.io_read_bps, kept.devices) == (64 << 20, None, 20, {}, None)
    assert enforceable(limits, set()).needs() == set()


def test_limits_name_the_option_and_a_class_default_names_its_file(tmp_path, monkeypatch):
    from labkit.runtime.spec import ContainerSpec
    from labkit.units import format_bytes

    defaults = tmp_path / "defaults.toml"
    defaults.write_text('[memory]\ndefault = "256m"\n[pids]\ndefault = 100\n')
    monkeypatch.setenv("LABKIT_DEFAULTS", str(defaults))
    spec = ContainerSpec(command=["true"], pids=20, cpus="0.5").validated()
    asked = spec.asked_limits()
    assert asked["pids"] == "--pids-limit 20"
    assert asked["cpu"] == "--cpus 0.5"
    assert asked["memory"] == f"--memory {format_bytes(256 << 20)} (the class default in {defaults})"


# --- as real ordinary users ------------------------------------------------------------

PROBE = textwrap.dedent("""
    from labkit.cgroups import container_hierarchy
    hierarchy = container_hierarchy()
    print(type(hierarchy).__name__)
    print(hierarchy.delegation.root)
    print(" ".join(sorted(hierarchy.controllers)))
    print(hierarchy.delegation.why_not)
""")


@pytest.fixture
def student():
    from throwaway_users import throwaway_user

    from throwaway_users import why_user_cannot_run_this_checkout

    if os.geteuid() != 0:
        pytest.skip("making a throw-away user needs root (useradd)")
    if why_user_cannot_run_this_checkout():
        pytest.skip(why_user_cannot_run_this_checkout())
    with throwaway_user() as user:
        yield user


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_as(user, code, **kwargs):
    """`code` as `user`, in the system's Python with this checkout's labkit (the venv's
    interpreter may live in root's home, which no other user can read)."""
    return user.run(["/usr/bin/python3", "-B", "-c", code], env={"PYTHONPATH": REPO}, **kwargs)


@pytest.mark.root
def test_an_ordinary_user_on_cgroup_v1_has_no_delegation(student):
    from labkit.cgroups import detect_mode

    if detect_mode() != "v1":
        pytest.skip("this host runs cgroup v2: the v1 case is shown on v1 hosts (these machines)")
    probe = python_as(student, PROBE)
    assert probe.returncode == 0, probe.stderr
    kind, root, controllers, why_not = probe.stdout.splitlines()
    assert (kind, root, controllers) == ("NoCgroups", "None", "")
    assert "cgroup v1" in why_not


def labkit_as(user, *args, env=None, **kwargs):
    """The `labkit` command as `user` (this checkout's, with the venv's packages)."""
    import sysconfig

    path = f"{REPO}:{sysconfig.get_paths()['purelib']}"
    return user.run(["/usr/bin/python3", "-B", "-c", "import sys; from labkit.cli import main; sys.exit(main())", *args],
                    env={"PYTHONPATH": path, **(env or {})}, **kwargs)


@pytest.mark.root
def test_on_cgroup_v1_a_rootless_container_runs_unlimited_and_each_limit_says_so(student):
    from labkit.cgroups import detect_mode

    if detect_mode() != "v1":
        pytest.skip("this host runs cgroup v2: the v1 case is shown on v1 hosts (these machines)")
    # The student's own class defaults, where rootless labkit reads them ($XDG_CONFIG_HOME).
    defaults = os.path.join(student.home, ".config", "labkit", "defaults.toml")
    os.makedirs(os.path.dirname(defaults))
    with open(defaults, "w") as handle:
        handle.write("[pids]\ndefault = 50\n")
    for path in (os.path.dirname(os.path.dirname(defaults)), os.path.dirname(defaults), defaults):
        os.chown(path, student.uid, student.gid)
    # 96 MiB through a 32 MiB --memory: OOM-killed where the limit holds (root, or v2).
    done = labkit_as(student, "run", "--memory", "32m", "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=96M",
                     "count=1", timeout=300)
    assert done.returncode == 0, done.stderr         # ran, unlimited: not OOM-killed
    lines = [line for line in done.stderr.splitlines() if line.startswith("labkit: ")]
    assert len(lines) == 2, done.stderr
    memory, pids = sorted(lines)
    assert "--memory 32" in memory and "not enforced" in memory and "cgroup v1" in memory and FIX in memory
    assert f"--pids-limit 50 (the class default in {defaults})" in pids and FIX in pids
    os.unlink(defaults)
    quiet = labkit_as(student, "run", "--", "true", timeout=300)
    assert quiet.returncode == 0 and "not enforced" not in quiet.stderr, quiet.stderr


# --- in the cgroup v2 VM: a subtree delegated as systemd does ---------------------------

LIMITS_HOLD = textwrap.dedent("""
    import errno, os, sys, time
    from labkit.cgroups import Limits, container_hierarchy

    hierarchy = container_hierarchy()
    root = hierarchy.delegation.root

    def inside(cgroup, work):
        pid = os.fork()
        if pid == 0:
            try:
                cgroup.add_process(os.getpid())
                work()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        return cgroup.stats()

    def allocate():
        blocks = [bytearray(1 << 20) for _ in range(128)]

    def fork_many():
        children = []
        for _ in range(40):
            try:
                child = os.fork()
            except BlockingIOError:
                continue
            if child == 0:
                time.sleep(1)
                os._exit(0)
            children.append(child)
        for child in children:
            os.waitpid(child, 0)

    def spin():
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            pass

    for leaf, limits, work in (("oom", Limits(memory=32 << 20), allocate), ("pids", Limits(pids=8), fork_many),
                               ("cpu", Limits(cpus=0.1), spin)):
        cgroup = hierarchy.create(leaf, limits)
        try:
            stats = inside(cgroup, work)
            print(leaf, stats.oom_kills, stats.pids_limit_hits, stats.throttled_periods)
        finally:
            cgroup.delete()

    parent = os.path.dirname(root)
    for attempt in (lambda: os.mkdir(os.path.join(parent, "mine")),
                    lambda: open(os.path.join(parent, "cgroup.subtree_control"), "w").write("-memory"),
                    lambda: open(os.path.join(root, "memory.max"), "w").write("max")):
        try:
            attempt()
            print("written")
        except PermissionError:
            print("refused")
""")


@pytest.fixture
def delegated_student(student, cgroup_v2_host):
    """A subtree owned by the student, as systemd's Delegate=yes makes `user@UID.service`
    (tests/throwaway_users.py: delegated_subtree)."""
    from throwaway_users import delegated_subtree

    with delegated_subtree(student) as (root, session):
        yield student, root, session


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_limits_hold_in_a_subtree_delegated_to_an_ordinary_user(delegated_student):
    student, root, session = delegated_student
    probe = python_as(student, PROBE, cgroup_procs=os.path.join(session, "cgroup.procs"))
    assert probe.returncode == 0, probe.stderr
    kind, found, controllers, _ = probe.stdout.splitlines()
    assert (kind, found) == ("DelegatedHierarchy", root)
    assert {"memory", "cpu", "pids"} <= set(controllers.split())

    run = python_as(student, LIMITS_HOLD, cgroup_procs=os.path.join(session, "cgroup.procs"))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    oom, pids, cpu = (line.split() for line in lines[:3])
    assert oom[0] == "oom" and int(oom[1]) > 0, lines           # the memory limit OOM-killed
    assert pids[0] == "pids" and int(pids[2]) > 0, lines        # forks refused at pids.max
    assert cpu[0] == "cpu" and int(cpu[3]) > 0, lines           # throttled at cpu.max
    # Above its subtree the user writes nothing: not its parent, not its own limits.
    assert lines[3:6] == ["refused", "refused", "refused"], lines
    # ...which root can (the refusal is the delegation's edge, not a broken file).
    os.mkdir(os.path.join(os.path.dirname(root), f"{os.path.basename(root)}-root-can"))
    os.rmdir(os.path.join(os.path.dirname(root), f"{os.path.basename(root)}-root-can"))
    # labkit's own cgroups went with the containers: only the session is left.
    assert [entry for entry in os.listdir(root) if os.path.isdir(os.path.join(root, entry))] == ["session"]


CONTAINERS = textwrap.dedent("""
    from labkit.runtime import run

    oom = run("dd if=/dev/zero of=/dev/null bs=96M count=1", memory="32m")
    assert oom.error is None, oom.error
    print("oom", oom.oom_killed, oom.cause)
    bomb = run("bomb() { bomb | bomb & }; bomb; sleep 2; true", pids=12, timeout=60)
    print("pids", bomb.stats["pids_limit_hits"], bomb.timed_out)
    spin = run("timeout 2 sh -c 'while :; do :; done'; true", cpus="0.2", timeout=120)
    print("cpu", spin.stats["throttled_periods"], spin.cpu_seconds < 0.6 * spin.duration)
    seen = run("cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; id -u", memory="64m", pids=20).check()
    print("inside", *seen.stdout.split())
""")


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_a_rootless_containers_memory_pids_and_cpu_limits_hold_in_the_delegated_subtree(delegated_student):
    import sysconfig

    student, root, session = delegated_student
    # The guest's / (and so the student's home) is an overlay, where an overlay's upper
    # directory cannot live: LABKIT_HOME on the guest's /tmp, a real tmpfs.
    home = tempfile.mkdtemp(prefix=f"labkit-{student.name}-", dir="/tmp")
    os.chown(home, student.uid, student.gid)
    env = {"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}", "LABKIT_HELPER_TIMEOUT": "600",
           "LABKIT_HOME": home}
    try:
        check_limits_hold(student, root, session, env)
    finally:
        shutil.rmtree(home)


def check_limits_hold(student, root, session, env):
    procs = os.path.join(session, "cgroup.procs")
    # Under emulation a cold start of the helper (this Python's modules read over 9p for the
    # first time, newuidmap) can outlast its 30 s answer: read them once, untimed, first.
    warm = student.run(["/usr/bin/python3", "-B", "-m", "labkit.linux.rootless", "--", "/usr/bin/python3", "-B", "-c",
                        "import labkit.runtime.helper.zygote, labkit.runtime.client.container"],
                       cgroup_procs=procs, env=env)
    assert warm.returncode == 0, warm.stderr
    done = student.run(["/usr/bin/python3", "-B", "-c", CONTAINERS], cgroup_procs=procs, env=env)
    assert done.returncode == 0, done.stderr
    assert "not enforced" not in done.stderr, done.stderr
    results = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert results["oom"][:1] == ["True"], done.stdout
    assert int(results["pids"][0]) > 0 and results["pids"][1] == "False", done.stdout
    assert int(results["cpu"][0]) > 0 and results["cpu"][1] == "True", done.stdout
    assert results["inside"] == [str(64 << 20), "20", "0"], done.stdout   # root inside, its limits seen
    assert [entry for entry in os.listdir(root) if os.path.isdir(os.path.join(root, entry))] == ["session"]


# --- the fork bomb experiment refuses to run where no pids limit would hold ------------

def test_the_fork_bomb_names_why_no_pids_limit_would_hold(tmp_path):
    from labkit.cgroups import HierarchyV1
    from labkit.experiments.pids_limit import why_no_pids_limit

    v1 = find_delegation(None, SESSION, lambda path: True, unified=False)
    assert why_no_pids_limit(rootless_hierarchy(v1)) == f"{v1.why_not}; {FIX}"
    mount = cgroupfs(tmp_path, SESSION, controllers="memory cpu")
    without_pids = rootless_hierarchy(find_delegation(mount, SESSION, lambda path: True, unified=True))
    why = why_no_pids_limit(without_pids)
    assert "pids controller is not delegated to you" in why and "cpu, memory" in why and FIX in why
    with_pids = rootless_hierarchy(find_delegation(cgroupfs(tmp_path / "b", SESSION), SESSION, lambda path: True,
                                                   unified=True))
    assert why_no_pids_limit(with_pids) is None

    class NoPidsKernel(HierarchyV1):
        controllers = {"cpu", "memory"}
    why = why_no_pids_limit(NoPidsKernel.__new__(NoPidsKernel))
    assert "no pids controller" in why and "CONFIG_CGROUP_PIDS" in why and "\n" not in why


@pytest.mark.root
def test_the_fork_bomb_experiment_refuses_to_run_as_an_ordinary_user_without_delegation(student):
    from labkit.cgroups import detect_mode

    if detect_mode() != "v1":
        pytest.skip("this host runs cgroup v2: the refusal is shown where nothing is delegated (v1 hosts)")
    done = labkit_as(student, "experiment", "run", "pids_limit", "--out", "results", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    verdict = [line for line in done.stdout.splitlines() if line.startswith("pids_limit:")]
    assert len(verdict) == 1, done.stdout
    assert "refuses to light a fork bomb that no pids limit would hold" in verdict[0], verdict
    assert "cgroup v1" in verdict[0] and FIX in verdict[0], verdict
    # Refused before any container: nothing was started, so no limit line was printed either.
    assert "not enforced" not in done.stderr, done.stderr
    assert not os.path.exists(os.path.join(student.home, ".local", "share", "labkit", "containers")) or \
        os.listdir(os.path.join(student.home, ".local", "share", "labkit", "containers")) == []


@pytest.mark.root
def test_the_fork_bomb_experiment_runs_where_its_pids_limit_holds(labkit_home):
    from labkit.experiments.pids_limit import Params, run, why_no_pids_limit

    assert why_no_pids_limit() is None   # root: the host's own pids controller
    result = run(Params(trials=1, seconds=0.5))
    (trial,) = result.data["trials"]
    assert trial["limit_hits"] > 0 and max(n or 0 for _, n in trial["samples"]) <= 32
