"""The helper's ready slots (runtime/helper/ready_slots.py), on the real kernel: a slot's cgroup carries
nothing of an earlier container, a slot really serves a start, a plan that does not fit
takes the usual path, and nothing of a slot is left once its helper is gone."""

import os
import signal
import subprocess
import sys
import time

import pytest

from leak_checks import helper_identity, helper_slot_cgroups, labkit_cgroups, only_ready_slots_left
from labkit.cgroups import detect_mode, host_hierarchy
from labkit.cgroups.slot_cgroups import owner_of
from labkit.grading.resources import limits_of
from labkit.runtime import Container, ContainerSpec, gc
from labkit.runtime.client.helper_client import get_helper, ready_slots as helper_ready_slots, settle, shutdown_helper
from labkit.runtime.inside.slot import SLOT_PROCESS_NAME

pytestmark = pytest.mark.root

V1_READY = detect_mode() == "v1" and {"memory", "cpu", "pids", "devices"} <= host_hierarchy().controllers


def wait_until(condition, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    return condition()


def ready_slots(helper) -> dict:
    """{cgroup path: the waiting first process} of the helper's ready slots (the helper: a
    PID, or (PID, start time))."""
    ready = {}
    for path, pids in helper_slot_cgroups(helper).items():
        if len(pids) == 1:
            pid = next(iter(pids))
            try:
                with open(f"/proc/{pid}/comm") as comm:
                    if comm.read().strip() == SLOT_PROCESS_NAME:
                        ready[path] = pid
            except (FileNotFoundError, ProcessLookupError):
                pass
    return ready


def ready_count(helper) -> int:
    """How many slots are ready as seen from outside (each has a cgroup in every hierarchy
    on v1). Of this process's helper, ask it too (`slots_ready`)."""
    return len({path.rsplit("/", 1)[-1] for path in ready_slots(helper)})


def slots_ready(count) -> bool:
    """Does this process's helper hold `count` ready slots? The helper's own word decides:
    a slot's first process waits in its cgroup before its "ready" reaches the helper, and
    a start in between takes the usual path. The look from outside comes first because a
    question is activity to the helper, which makes slots only once it has been quiet."""
    return ready_count(get_helper().pid) >= count and len(helper_ready_slots()) >= count


def a_slot_is_ready() -> tuple:
    """This process's helper, once it holds a ready slot, as (PID, start time)."""
    helper = helper_identity(get_helper().pid)
    if not ready_slots(helper):
        Container(ContainerSpec(command=["true"])).run()   # slots are made once a container was asked for
    assert wait_until(lambda: slots_ready(1)), "the helper made no ready slot"
    return helper


def alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def processes_in_netns(inode) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                pass
    return found


# --- a slot's cgroup is fresh ---------------------------------------------------------

# A forks past its pids limit (in a shell of its own: a shell that cannot fork gives up),
# is OOM-killed in part (dd; its shell goes on), burns CPU, then waits so that its
# counters can be read.
HEAVY = ("sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done' 2>/dev/null; sleep 3; "
         "dd if=/dev/zero of=/dev/null bs=48M count=1; "
         "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo used; exec sleep 600")


def counters(cgroup) -> dict:
    stats = cgroup.stats()
    return {"oom_kills": stats.oom_kills, "pids_limit_hits": stats.pids_limit_hits,
            "cpu_seconds": stats.cpu_seconds, "memory_peak": stats.memory_peak}


def carries_nothing_of_a_previous_container(labkit_home):
    """A, from a slot, with limits, using memory, CPU and forks; then B from the next slot."""
    a_slot_is_ready()
    first = Container(ContainerSpec(command=["sh", "-c", HEAVY], memory="32m", pids=6))
    first.start(detach=True)
    try:
        assert first.pooled, "the first container was not served by a slot"
        assert wait_until(lambda: "used" in first.logs(), 60), first.logs()
        before = counters(first.cgroup)
        # What a reused cgroup would carry into the next container: all of it nonzero.
        assert before["oom_kills"] >= 1 and before["pids_limit_hits"] >= 1, before
        assert before["cpu_seconds"] > 0.01 and before["memory_peak"] > 16 << 20, before
        first_cgroup = first.cgroup_name
    finally:
        first.remove()
    settle()
    a_slot_is_ready()
    second = Container(ContainerSpec(command=["sleep", "600"], memory="64m"))
    second.start(detach=True)
    try:
        assert second.pooled, "the second container was not served by a slot"
        assert second.cgroup_name != first_cgroup
        cgroup = second.cgroup
        assert limits_of(cgroup) == {"memory": 64 << 20, "cpus": None, "pids": None}
        assert cgroup.pids() == [second.pid]
        after = counters(cgroup)
        assert after["oom_kills"] == 0 and after["pids_limit_hits"] == 0, after
        assert after["cpu_seconds"] < before["cpu_seconds"] and after["memory_peak"] < 16 << 20, after
    finally:
        second.remove()


@pytest.mark.skipif(not V1_READY, reason="the host's cgroups are not v1 with memory, cpu, pids and devices")
def test_a_slot_carries_nothing_of_the_previous_container_on_v1(no_leftovers):
    carries_nothing_of_a_previous_container(no_leftovers)


@pytest.mark.cgroup_v2
@pytest.mark.usefixtures("cgroup_v2_host")
def test_a_slot_carries_nothing_of_the_previous_container_on_v2(no_leftovers):
    carries_nothing_of_a_previous_container(no_leftovers)


# --- when slots are made, which plans a slot serves ------------------------------------

def test_a_helper_makes_slots_once_it_was_asked_for_a_container(labkit_home):
    """A one-shot `labkit run` must not pay for slots it will never use."""
    shutdown_helper()
    helper = get_helper().pid
    assert not wait_until(lambda: helper_slot_cgroups(helper), seconds=1), "slots made before any container"
    Container(ContainerSpec(command=["true"])).run()
    assert wait_until(lambda: slots_ready(2)), "no slots after a container"



def test_a_slot_serves_a_default_container_and_the_helper_says_so(no_leftovers):
    helper = a_slot_is_ready()
    container = Container(ContainerSpec(command=["sh", "-c", "cat /proc/self/cgroup; hostname"], hostname="box"))
    container.start(detach=True)
    try:
        leaf = container.cgroup_name.rsplit("/", 1)[-1]
        assert container.pooled and owner_of(leaf) == helper
        assert container.files.read_state()["cgroup"] == container.cgroup_name
        result = container.wait(30)
        lines = container.logs().splitlines()
    finally:
        container.remove()
    assert result.exit_code == 0
    assert lines[-1] == "box"
    # Seen from inside its cgroup namespace, its cgroup is the root, as without a slot.
    assert all(line.endswith(":/") for line in lines[:-1]), lines


@pytest.mark.parametrize("spec", [
    dict(network="host"),
    dict(namespaces=("mnt", "uts", "ipc", "pid", "net", "cgroup", "user")),
    dict(time_offset=3600),
], ids=["net-host", "userns", "time-offset"])
def test_a_plan_that_does_not_fit_a_slot_takes_the_usual_path(no_leftovers, spec):
    helper = a_slot_is_ready()
    slots = set(ready_slots(helper))
    container = Container(ContainerSpec(command=["sh", "-c", "echo ran"], **spec))
    result = container.run()
    assert (result.exit_code, result.stdout) == (0, "ran\n"), result.stderr
    assert container.pooled is False and container.cgroup_name == f"labkit/{container.id}"
    assert slots <= set(ready_slots(helper)), "a slot was used up by a plan it cannot serve"


# --- the root made ahead ---------------------------------------------------------------

ROOT_LINE = "grep ' / / ' /proc/self/mountinfo"


def root_made_ahead(helper) -> list:
    """The ready slots whose first process has built a container's root ahead and pivoted
    into it: its root an overlay of a slot's directory (LABKIT_HOME/slots/, this test's),
    with a /proc on it, seen from outside."""
    slots = os.path.join(os.environ["LABKIT_HOME"], "slots", "pool-")
    made = []
    for path, pid in ready_slots(helper).items():
        try:
            with open(f"/proc/{pid}/mountinfo") as table:
                points = {line.split()[4]: line for line in table}
        except (FileNotFoundError, ProcessLookupError):
            continue
        root = points.get("/", "")
        if " overlay " in root and f"upperdir={slots}" in root and "/proc" in points:
            made.append(path.rsplit("/", 1)[-1])
    return made


def ready_with_root(helper) -> bool:
    """A slot with this test's root built is ready, in the helper's own word too (a slot
    is seen waiting from outside before its "ready" reaches the helper)."""
    made = set(root_made_ahead(helper))
    return bool(made and made & {name.rsplit("/", 1)[-1] for name in helper_ready_slots()})


def slot_directories(home) -> list:
    return os.listdir(home / "slots") if (home / "slots").is_dir() else []


def a_root_is_made_ahead() -> tuple:
    helper = helper_identity(get_helper().pid)
    Container(ContainerSpec(command=["true"])).run()   # the root the next slots make
    assert wait_until(lambda: ready_with_root(helper)), "no slot made the default image's root ahead"
    return helper


def test_a_slot_directory_a_container_took_is_not_swept_before_its_state_is_written(tmp_path):
    """Between the rename of a ready slot's directory to the container's and its state.json,
    a sweep in another process (a second kernel's helper starting) sees a directory without
    state, which it removes once it is a minute old. A slot's may have waited for longer,
    and a rename keeps a directory's mtime: without the take-over's touch, this sweep
    removed the directory under a container about to run in it."""
    from labkit.runtime.client.state import sweep
    from labkit.runtime.container_dir import ContainerDir, containers_root, slots_root

    slot = ContainerDir(slots_root(tmp_path) / "pool-1-2-3")
    slot.make({"hostname": "slot\n"})
    made_long_ago = time.time() - 600
    os.utime(slot.path, (made_long_ago, made_long_ago))
    taken = ContainerDir(containers_root(tmp_path) / "0123456789abcdef")
    taken.take_over(slot, {"hostname": "web\n"})
    hierarchy = type(host_hierarchy())()
    hierarchy.parent = f"labkit-test-{os.getpid()}"   # none: no cgroup of anyone's is looked at
    assert sweep(tmp_path, hierarchy) == []
    assert taken.etc_file("hostname").read_text() == "web\n"


def test_a_slot_makes_the_root_ahead_and_the_container_gets_its_own_files(no_leftovers):
    a_root_is_made_ahead()
    first = Container(ContainerSpec(command=["sh", "-c", f"hostname; cat /etc/hostname; grep -c box9 /etc/hosts; "
                                                         f"echo mine > /tmp/mark; {ROOT_LINE}"], hostname="box9"))
    result = first.run()
    assert result.exit_code == 0, result.stderr
    hostname, etc_hostname, hosts, root = result.stdout.splitlines()
    assert first.pooled and "/slots/pool-" in root, root   # it was served by a root made ahead
    assert (hostname, etc_hostname, hosts) == ("box9", "box9", "1")
    # Each slot's root has its own read-write layer: the next container sees nothing of it.
    assert wait_until(lambda: ready_with_root(helper_identity(get_helper().pid)))
    second = Container(ContainerSpec(command=["sh", "-c", f"cat /tmp/mark 2>&1; hostname; {ROOT_LINE}"]))
    result = second.run()
    lines = result.stdout.splitlines()
    assert "No such file" in lines[0] and lines[1] == second.name, result.stdout
    assert "/slots/pool-" in lines[2] and lines[2] != root


def test_the_kernel_paths_of_a_root_made_ahead_are_masked_as_without_a_slot(no_leftovers):
    probe = ("cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l; (echo x > /proc/sys/kernel/domainname) 2>&1; "
             "grep -c . /proc/self/mountinfo; id; cat /proc/self/status | grep -E '^(Seccomp|CapEff):'")
    # --net host does not fit a slot: the usual path, for comparison
    usual = Container(ContainerSpec(command=["sh", "-c", probe], network="host")).run()
    a_root_is_made_ahead()
    ahead = Container(ContainerSpec(command=["sh", "-c", f"{probe}; {ROOT_LINE}"])).run()
    assert "/slots/pool-" in ahead.stdout.splitlines()[-1]
    assert ahead.stdout.splitlines()[:-1] == usual.stdout.splitlines(), (ahead.stdout, usual.stdout)
    timer_list, firmware, refused = usual.stdout.splitlines()[:3]
    assert (timer_list, firmware) == ("0", "0") and "Read-only file system" in refused, usual.stdout


def test_a_container_unlike_the_root_made_ahead_never_gets_it(no_leftovers, tmp_path):
    """A volume, another image, a container that stays: each gets a root of its own."""
    helper = a_root_is_made_ahead()
    (tmp_path / "shared").write_text("from the host\n")
    with_volume = Container(ContainerSpec(command=["sh", "-c", f"cat /data/shared; {ROOT_LINE}"],
                                          volumes=[f"{tmp_path}:/data"])).run()
    assert with_volume.stdout.splitlines()[0] == "from the host"
    assert "/slots/pool-" not in with_volume.stdout
    kept = Container(ContainerSpec(command=["sh", "-c", f"echo other > /which; {ROOT_LINE}"]))
    try:
        result = kept.run(remove=False)
        assert "/slots/pool-" not in result.stdout and f"/containers/{kept.id}/" in result.stdout
        kept.commit("other")
    finally:
        kept.remove()
    assert wait_until(lambda: ready_with_root(helper))
    other = Container(ContainerSpec(image="other", command=["cat", "/which"])).run()
    assert (other.exit_code, other.stdout) == (0, "other\n"), other.stderr
    # From now on the slots make the other image's root; the default image is still itself.
    assert wait_until(lambda: ready_with_root(helper))
    again = Container(ContainerSpec(command=["sh", "-c", f"cat /which 2>&1; {ROOT_LINE}"])).run()
    assert "No such file" in again.stdout.splitlines()[0], again.stdout


def test_a_root_made_ahead_is_not_used_once_its_layers_are_removed(no_leftovers, labkit_home):
    """Its overlay holds the layers' old directories: a layer removed and imported again
    is another directory, which the container must see instead."""
    from labkit.images import get_image

    a_root_is_made_ahead()
    assert wait_until(lambda: slots_ready(3)), "the pool did not fill"   # full: no slot is made meanwhile
    store = get_image("busybox").store
    for digest in get_image("busybox").layers:   # what `image rm` and a new pull do to its directory
        layer = store.layer_dir(digest)
        os.rename(layer, f"{layer}.old")
        subprocess.run(["cp", "-a", f"{layer}.old", str(layer)], check=True)
        subprocess.run(["rm", "-rf", f"{layer}.old"], check=True)
    container = Container(ContainerSpec(command=["sh", "-c", ROOT_LINE]))
    result = container.run()
    assert result.exit_code == 0, result.stderr
    assert container.pooled and f"/containers/{container.id}/" in result.stdout, result.stdout


@pytest.mark.skipif(not V1_READY, reason="the host's cgroups are not v1 with a devices controller")
def test_a_privileged_container_from_a_slot_may_open_every_device_on_v1(no_leftovers):
    a_slot_is_ready()
    container = Container(ContainerSpec(command=["cat", "/sys/fs/cgroup/devices/devices.list"], privileged=True))
    result = container.run()
    assert container.pooled and result.exit_code == 0, result.stderr
    assert result.stdout == "a *:* rwm\n"
    # The slot's own list, the default one, is what it would have kept without the rewrite.
    a_slot_is_ready()
    default = Container(ContainerSpec(command=["cat", "/sys/fs/cgroup/devices/devices.list"]))
    assert default.run().stdout != "a *:* rwm\n" and default.pooled


def test_slots_killed_while_waiting_are_discarded_and_never_serve_a_start(no_leftovers):
    helper = a_slot_is_ready()
    assert wait_until(lambda: slots_ready(2)), "the pool did not fill to two slots or more"
    killed = set(helper_ready_slots())
    waiting = set(ready_slots(helper).values())
    for pid in waiting:
        os.kill(pid, signal.SIGKILL)
    # The helper's word, not the processes' deaths seen from outside: it may already have
    # made fresh slots in their place (it does in its idle time), which a start may get.
    assert wait_until(lambda: not killed & set(helper_ready_slots())), "the helper kept a killed slot"
    container = Container(ContainerSpec(command=["sh", "-c", "echo ran"]))
    result = container.run()
    assert (result.exit_code, result.stdout) == (0, "ran\n"), result.stderr
    assert container.cgroup_name not in killed
    # (no_leftovers asserts: the dead slots' cgroups went with them)


POOL_SCRIPT = """
import os, select, selectors, signal
from labkit.runtime import Container, ContainerSpec
from labkit.runtime.helper import ready_slots
plan = Container(ContainerSpec(command=["/bin/true"]))._plan(hold=False, auto_remove=True)
pool = ready_slots.Pool(1, selectors.DefaultSelector())
if SUPERVISED:
    pool.own_pid_namespace = None   # made as a rootless helper makes them: a supervisor, then P
pool.fill_one()
slot = pool.slots[0]
select.select([slot.plan_socket], [], [], 30)
pool.on_slot_message(slot)
print("ready:", slot.ready)
if slot.supervisor_pid is None:
    os.kill(slot.pid, signal.SIGKILL)   # P, forked by the helper itself
else:
    os.killpg(slot.supervisor_pid, signal.SIGKILL)   # its first process follows by its death signal
select.select([slot.plan_socket], [], [], 30)    # the end of its socket: an event for the next select
print("taken:", pool.take(plan))                 # a start finds it dead: discarded
pool.on_slot_message(slot)                       # that event, late in the same select
print("slots:", pool.slots)
pool.close()
print(*pool.helper)
"""


@pytest.mark.skipif(not V1_READY and detect_mode() != "v2", reason="slots need a devices controller")
@pytest.mark.parametrize("supervised", [False, True], ids=["alone", "supervised"])
def test_a_late_event_of_a_slot_discarded_at_a_start_is_ignored(labkit_home, supervised):
    """A slot whose first process died is discarded by the start that finds it so; the end
    of its socket may still be an event of the same select. Read again as a death, it was
    discarded twice: a second waitpid and a read of closed descriptors, which raised out of
    the helper's loop (or, once a descriptor number was reused, read another's). Both
    kinds of slot: P forked by the helper (root), and P under a supervisor (rootless)."""
    script = f"SUPERVISED = {supervised}\n" + POOL_SCRIPT
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *said, identity = done.stdout.splitlines()
    assert said == ["ready: True", "taken: None", "slots: []"], done.stdout + done.stderr
    assert not helper_slot_cgroups(tuple(int(n) for n in identity.split())), "a slot cgroup was left"


BURST_SCRIPT = """
import select, selectors
from labkit.runtime import Container, ContainerSpec
from labkit.runtime.helper import ready_slots
plan = Container(ContainerSpec(command=["/bin/true"]))._plan(hold=False, auto_remove=True)
pool = ready_slots.Pool(1, selectors.DefaultSelector())
said = []
def look(what):
    said.append(f"{what}: extra {pool.extra}, slots {len(pool.slots)}, wants more {pool.wants_more()}")
pool.take(plan)
look("no slot made yet")
for turn in range(ready_slots.BURST_EXTRA + 1):
    pool.fill_one()   # its "ready" is not read yet: a start finds it still being made
    pool.take(plan)
    look(f"dry {turn + 1}")
for slot in pool.slots:
    select.select([slot.plan_socket], [], [], 30)
    pool.on_slot_message(slot)
taken = pool.take(plan)
look(f"ready {sum(slot.ready for slot in pool.slots) + 1}, one taken {taken is not None}")
pool.shrink()
look("shrunk")
pool.discard(taken)
pool.close()
print(*said, sep="\\n")
print(*pool.helper)
"""


@pytest.mark.skipif(not V1_READY and detect_mode() != "v2", reason="slots need a devices controller")
def test_a_pool_that_runs_dry_in_a_burst_grows_and_shrinks_back():
    """Back to back, a start comes faster than a slot is ready (a fork, a root, a cgroup's
    RCU wait): one that finds every slot still being made adds one (up to BURST_EXTRA),
    so that the next find one ready instead of taking the slow way; a pool with no slot
    made yet (the helper's first start) is not a burst. `shrink` (the helper's, after a
    quiet while) gives the pool its size again, and nothing of the slots is left."""
    done = subprocess.run([sys.executable, "-c", BURST_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *said, identity = done.stdout.splitlines()
    assert said == ["no slot made yet: extra 0, slots 0, wants more True",
                    "dry 1: extra 1, slots 1, wants more True",
                    "dry 2: extra 2, slots 2, wants more True",
                    "dry 3: extra 2, slots 3, wants more False",
                    "ready 3, one taken True: extra 2, slots 2, wants more True",
                    "shrunk: extra 0, slots 1, wants more False"], done.stdout + done.stderr
    assert not helper_slot_cgroups(tuple(int(n) for n in identity.split())), "a slot cgroup was left"


def test_an_interrupted_start_from_a_slot_leaves_nothing(no_leftovers):
    a_slot_is_ready()
    container = Container(ContainerSpec(command=["sh", "-c", "echo go; sleep 30; echo slept"]))

    def interrupt(stream, text):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        container.run(on_output=interrupt)
    assert container.pooled and container.result.interrupted and "slept" not in container.result.stdout
    # (no_leftovers asserts: no directory, cgroup (the slot's included) or mount remains)


# --- nothing of a slot outlives its helper ------------------------------------------------

def slot_processes(helper) -> dict:
    """{first process: its supervisor} of the helper's ready slots."""
    found = {}
    for pid in ready_slots(helper).values():
        with open(f"/proc/{pid}/status") as status:
            found[pid] = next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
    return found


def test_shutting_the_helper_down_leaves_no_slot_cgroup_process_or_netns(labkit_home):
    helper = a_root_is_made_ahead()
    assert wait_until(lambda: slots_ready(2)), "the pool did not fill to two slots or more"
    firsts = slot_processes(helper)
    netns = {os.stat(f"/proc/{pid}/ns/net").st_ino for pid in firsts}
    assert all(processes_in_netns(inode) for inode in netns)
    assert slot_directories(labkit_home)   # the roots made ahead, in directories of their own
    shutdown_helper()
    assert helper_slot_cgroups(helper) == {}
    assert slot_directories(labkit_home) == []
    assert [pid for pair in firsts.items() for pid in pair if alive(pid)] == []
    assert [inode for inode in netns if processes_in_netns(inode)] == []


OWNER = """
import time
from labkit.runtime import Container, ContainerSpec
from labkit.runtime.client.helper_client import get_helper
helper = get_helper()
Container(ContainerSpec(command=["true"])).run()
print(helper.pid, flush=True)
time.sleep(100)
"""


@pytest.mark.parametrize("helper_too", [False, True], ids=["owner-killed", "owner-and-helper-killed"])
def test_killed_owners_leave_no_slot_behind(labkit_home, helper_too):
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, LABKIT_HOME=str(labkit_home)))
    helper = int(owner.stdout.readline())
    identity = helper_identity(helper)   # while it lives: its PID may be another's later
    assert wait_until(lambda: ready_count(identity) >= 2), "the pool did not fill to two slots or more"
    firsts = slot_processes(identity)
    paths = set(ready_slots(identity))
    assert slot_directories(labkit_home)
    if helper_too:
        os.kill(helper, signal.SIGKILL)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    # Without its owner the helper removes its slots itself; SIGKILLed too, the slots'
    # processes die by their parent-death signals and leave their cgroups empty...
    assert wait_until(lambda: not any(alive(pid) for pair in firsts.items() for pid in pair))
    if helper_too:
        assert wait_until(lambda: not alive(helper))
        assert all(os.path.isdir(path) for path in paths)
        # ...which the sweep removes at once: their helper is gone.
        removed = gc()
        assert any(f"pool-{identity[0]}-{identity[1]}-" in line for line in removed), removed
        # A slot the helper was still making when it was killed (it keeps three) may hold a
        # process that dies by its parent-death signal only after that sweep, which skips a
        # cgroup with a process in it: the next sweep takes it.
        assert wait_until(lambda: gc() is not None and helper_slot_cgroups(identity) == {})
    assert wait_until(lambda: helper_slot_cgroups(identity) == {})
    assert [path for path in labkit_cgroups() if f"/pool-{identity[0]}-{identity[1]}-" in path] == []
    if helper_too:
        assert wait_until(lambda: gc() is not None and slot_directories(labkit_home) == [])
    else:   # its helper removed them itself
        assert wait_until(lambda: slot_directories(labkit_home) == [])


def test_the_sweep_removes_a_dead_helpers_empty_slot_and_never_a_live_ones():
    """Under a parent of this test's own (the shared `labkit` parent holds other tests'
    cgroups), with no minimum age: empty cgroups named as a live helper's slot, a dead
    helper's slot, and neither."""
    from labkit.cgroups import Limits
    from labkit.cgroups.slot_cgroups import slot_leaf
    from labkit.linux.processes import start_time
    from labkit.runtime.client.state import _sweep_orphan_cgroups

    hierarchy = type(host_hierarchy())()
    hierarchy.parent = f"labkit-test-{os.getpid()}"
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = hierarchy.create(slot_leaf(os.getpid(), start_time(os.getpid()), 1), Limits())
    dead = hierarchy.create(slot_leaf(gone.pid, 12345, 1), Limits())
    other = hierarchy.create("not-a-slot", Limits())
    try:
        removed = _sweep_orphan_cgroups(hierarchy, live_ids=set(), min_age_seconds=0)
        assert sorted(removed) == sorted([f"cgroup {dead.name}", f"cgroup {other.name}"])
        assert live.exists() and not dead.exists() and not other.exists()
    finally:
        for cgroup in (live, dead, other):
            cgroup.delete()


def test_the_leak_check_sees_a_slot_cgroup_left_empty(labkit_home):
    """What no_leftovers relies on: a slot's cgroup whose container is gone but which was
    not torn down is found (here one made by hand, named as the live helper's)."""
    from leak_checks import empty_slot_cgroups
    from labkit.cgroups import Limits
    from labkit.cgroups.slot_cgroups import slot_leaf

    helper = a_slot_is_ready()
    assert empty_slot_cgroups(helper, timeout=5) == []
    left = host_hierarchy().create(slot_leaf(*helper, 999999), Limits())
    # An earlier helper that had the same PID (pid_max is 32768 here) and died leaving an
    # empty slot not swept yet: not this helper's. A PID alone counted it, so no_leftovers
    # could say "pool slot cgroups left behind" of a test that left nothing, at random.
    earlier = host_hierarchy().create(slot_leaf(helper[0], helper[1] - 1, 999998), Limits())
    try:
        # (A slot the helper is making now is empty for a moment too: only ours are looked for.)
        for who in (helper, helper[0]):   # the pair, or the live helper's PID looked up now
            found = empty_slot_cgroups(who, timeout=0)
            assert any(path.endswith("/" + left.name) for path in found), found
            assert not any(path.endswith("/" + earlier.name) for path in found), found
    finally:
        left.delete()
        earlier.delete()


def spares(home) -> list:
    return [name for name in slot_directories(home) if "-spare-" in name]


def test_a_kept_skeleton_carries_nothing_of_its_container_and_goes_with_the_helper(labkit_home):
    """An exited container's directory is stripped to its skeleton and kept for the next
    slot's (ContainerDir.make_spare): what the container wrote, its /etc files and the
    read-write layer's root it chmod'ed are made new; once the helper is gone, so are the
    skeletons it kept."""
    from labkit.runtime.client.helper_client import shutdown_helper

    a_root_is_made_ahead()
    marks = "echo mine > /mark; echo changed > /etc/hostname; chmod 700 /; "
    for _ in range(10):
        Container(ContainerSpec(command=["sh", "-c", marks])).run().check()
        settle()
        if spares(labkit_home):
            break
    assert spares(labkit_home), "no skeleton was kept"
    seen = set()
    for _ in range(6):   # the slots made from now on take the skeletons
        look = Container(ContainerSpec(command=["sh", "-c", "cat /mark 2>&1; cat /etc/hostname; stat -c %a /"]))
        lines = look.run().check().stdout.splitlines()
        assert "No such file" in lines[0] and lines[1:] == [look.name, "755"], lines
        seen.add(look.pooled)
        settle()
    assert seen == {True}
    shutdown_helper()
    assert slot_directories(labkit_home) == []


def test_a_userns_containers_directory_is_never_kept(labkit_home):
    """Its layer and root belong to the user namespace's ids: removed, not kept."""
    from labkit.runtime.client.helper_client import shutdown_helper
    from labkit.runtime.container_dir import ContainerDir
    from labkit.runtime.spec import userns_fields

    a_root_is_made_ahead()
    before = set(spares(labkit_home))
    container = Container(ContainerSpec(command=["true"], **userns_fields(True)))
    container.run().check()
    settle()
    assert set(spares(labkit_home)) == before
    assert not ContainerDir.of(container.id, labkit_home).path.exists()
    shutdown_helper()
