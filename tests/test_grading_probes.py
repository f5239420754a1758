"""Every probe on the real kernel, passing and just failing: the state a check looks at is
made for real (namespaces, cgroups, layers, bridges, ports) and read back from /proc,
cgroup files, the layer store and netlink."""

import os
import socket
import subprocess

import pytest

from labkit.grading import Answer, Observation
from labkit.grading import probes as p


def look(probe) -> Observation:
    seen = probe()
    assert isinstance(seen, Observation)
    return seen


@pytest.fixture
def start(labkit_home):
    """start(**spec) -> a detached container of this test, removed afterwards."""
    from labkit.runtime import Container, ContainerSpec

    made = []

    def start_one(**fields):
        fields.setdefault("command", ["sleep", "600"])
        container = Container(ContainerSpec(**fields)).start(detach=True)
        made.append(container)
        return container

    yield start_one
    for container in reversed(made):
        container.remove()


@pytest.mark.root
def test_hostname_and_own_namespaces(start):
    box = start(name="gp-box", hostname="lab")
    assert look(p.hostname("gp-box", "lab")).passed
    missed = look(p.hostname("gp-box", "lab2"))
    assert not missed.passed and missed.observed == "hostname 'lab'"
    assert look(p.own_namespaces(box, ("pid", "net", "ipc", "uts"))).passed
    hostnet = start(name="gp-hostnet", network="host")
    shared = look(p.own_namespaces(hostnet, ("pid", "net")))
    assert not shared.passed and "net: shared with the host" in shared.observed
    assert look(p.shares_namespace(hostnet, "net")).passed
    assert not look(p.shares_namespace(box, "net")).passed


@pytest.mark.root
def test_pid_view_and_the_host_pid_of_pid1(start, monkeypatch):
    import __main__

    box = start(name="gp-pids", command=["sh", "-c", "sleep 600 & wait"])
    assert look(p.pid_view(box)).passed
    no_pid_ns = start(name="gp-nopidns", namespaces=("mnt", "uts", "ipc", "net", "cgroup"))
    assert not look(p.pid_view(no_pid_ns)).passed

    monkeypatch.setattr(__main__, "gp_answer", box.pid, raising=False)
    assert look(p.host_pid_of_pid1(Answer("gp_answer"), box)).passed
    child = [pid for pid, _ in box.top() if pid != box.pid][0]     # the sleep: PID 2 inside
    monkeypatch.setattr(__main__, "gp_answer", child)
    missed = look(p.host_pid_of_pid1(Answer("gp_answer"), box))
    assert not missed.passed and "it is PID 2 there" in missed.observed
    monkeypatch.setattr(__main__, "gp_answer", os.getpid())
    assert not look(p.host_pid_of_pid1(Answer("gp_answer"), box)).passed


@pytest.mark.root
def test_root_inside_is_not_root_outside_only_with_a_user_namespace(start):
    userns = start(name="gp-userns", namespaces=("mnt", "uts", "ipc", "pid", "net", "cgroup", "user"))
    assert look(p.root_inside_not_outside(userns)).passed
    assert look(p.uid_inside(userns, 0)).passed
    plain = start(name="gp-nouserns")
    missed = look(p.root_inside_not_outside(plain))
    assert not missed.passed and "host's root" in missed.observed
    assert look(p.uid_inside(plain, 0)).passed and not look(p.uid_inside(plain, 1000)).passed


@pytest.mark.root
def test_limits_are_read_back_from_the_cgroup(start):
    capped = start(name="gp-capped", memory="64m", cpus="0.5", pids=32)
    assert look(p.memory_limit(capped, 67108864)).passed
    assert not look(p.memory_limit(capped, "62m")).passed          # 3 % off, tolerance 2 %
    assert look(p.cpu_limit(capped, 0.5)).passed and not look(p.cpu_limit(capped, 0.45)).passed
    assert look(p.pids_limit(capped, 32)).passed and not look(p.pids_limit(capped, 31)).passed
    free = start(name="gp-free")
    assert look(p.memory_limit(free, "64m")).observed == "no memory limit"


@pytest.mark.root
def test_oom_kill_and_a_clean_finish_from_results(labkit_home):
    from labkit.runtime import run

    big = run("dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null", memory="32m")
    fits = run("dd if=/dev/zero of=/dev/null bs=96M count=1 2>/dev/null", memory="160m")
    assert look(p.oom_killed(big)).passed and not look(p.finished_ok(big)).passed
    assert not look(p.oom_killed(fits)).passed and look(p.finished_ok(fits)).passed


@pytest.mark.root
def test_a_pids_limit_holds_a_burst_of_forks(labkit_home):
    from labkit.runtime import run

    burst = "for i in $(seq 60); do sleep 1 & done 2>/dev/null; wait"
    held = run(burst, pids=16)
    roomy = run(burst, pids=100)
    assert look(p.fork_bomb_held(held)).passed
    assert not look(p.fork_bomb_held(roomy)).passed


@pytest.mark.root
def test_cpu_share_and_throttling_of_a_busy_loop(start):
    spinner = start(name="gp-spin", cpus="0.25", command=["sh", "-c", "while :; do :; done"])
    # A busy host may keep it from being measured (run again), never from being right.
    share = look(p.cpu_share(spinner, 0.25, tolerance=0.10))
    assert share.passed or share.retry, share
    throttled = look(p.throttled(spinner))
    assert throttled.passed or throttled.retry, throttled
    # The quota caps it at 0.25: 0.3 ± 10 % is out of reach however idle the host is.
    assert not look(p.cpu_share(spinner, 0.3, tolerance=0.10, deadline=2)).passed
    idle = start(name="gp-idle", cpus="0.25")
    quiet = look(p.throttled(idle, deadline=1))
    assert not quiet.passed and not quiet.retry, quiet     # it never wanted the CPU: a wrong answer


@pytest.fixture
def crowded_cpu():
    """crowd(pid, hogs): `pid` and `hogs` busy loops of this test share one CPU, so `pid`
    waits for it most of the time: a busy host made on purpose. The loops end afterwards."""
    hogs = []
    cpu = min(os.sched_getaffinity(0))

    def crowd(pid, count):
        os.sched_setaffinity(pid, {cpu})
        for _ in range(count):
            hogs.append(subprocess.Popen(["sh", "-c", "while :; do :; done"]))
            os.sched_setaffinity(hogs[-1].pid, {cpu})

    yield crowd
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.mark.root
def test_a_cpu_share_measured_on_a_crowded_cpu_is_busy_host_not_a_pass_nor_a_fail(start, crowded_cpu):
    """Four busy loops on its CPU can leave a quarter-core spinner less than its quota: never
    a wrong answer (run again), and a pass only where its quota still ran out in nearly every
    period (then it got what the quota gives: the container's own cgroup is one scheduling
    entity against the loops', and it often does). A spinner with no quota at all, crowded
    down to about a quarter of a core, must not pass for having one: the measurement cannot
    be trusted."""
    capped = start(name="gp-crowded", cpus="0.25", command=["sh", "-c", "while :; do :; done"])
    free = start(name="gp-unlimited", command=["sh", "-c", "while :; do :; done"])
    crowded_cpu(capped.pid, 4)
    crowded_cpu(free.pid, 0)      # the same CPU: five loops and the capped one share it
    seen = look(p.cpu_share(capped, 0.25, tolerance=0.10, deadline=3))
    assert seen.passed or (seen.retry and seen.observed.startswith("busy host, run again")), seen
    seen = look(p.cpu_share(free, 0.25, tolerance=0.10, deadline=3))
    assert not seen.passed and seen.retry and seen.observed.startswith("busy host, run again"), seen
    unlimited = look(p.throttled(free, deadline=1))
    assert not unlimited.passed and not unlimited.retry, unlimited   # no quota: nothing to excuse
    # Run outside the crowd, the spinner without a quota is measured, and fails.
    os.sched_setaffinity(free.pid, os.sched_getaffinity(0))
    seen = look(p.cpu_share(free, 0.25, tolerance=0.10, deadline=10))
    assert not seen.passed, seen


@pytest.fixture
def notes_image(labkit_home):
    from labkit.images import build
    from labkit.runtime.client.build_step import run_build_step

    return build("FROM busybox\nRUN echo my notes > /root/notes && rm /bin/vi\n", "gp-notes", run_step=run_build_step)


@pytest.mark.root
def test_layers_show_additions_and_whiteouts(notes_image, monkeypatch):
    import __main__

    assert look(p.top_layer_adds("gp-notes", "/root/notes")).passed
    assert not look(p.top_layer_adds("gp-notes", "/root/other")).passed
    assert look(p.top_layer_deletes("gp-notes", "/bin/vi")).passed
    assert not look(p.top_layer_deletes("gp-notes", "/bin/ls")).passed
    assert look(p.image_lacks("gp-notes", "/bin/vi")).passed and not look(p.image_lacks("gp-notes", "/bin/ls")).passed
    assert look(p.image_contains("gp-notes", "/root/notes")).passed
    assert not look(p.image_contains("busybox", "/root/notes")).passed

    monkeypatch.setattr(__main__, "gp_whiteout", notes_image.layer_dirs[-1] / "bin" / "vi", raising=False)
    assert look(p.is_whiteout_of(Answer("gp_whiteout"), "gp-notes", "/bin/vi")).passed
    monkeypatch.setattr(__main__, "gp_whiteout", notes_image.layer_dirs[0] / "bin" / "vi")   # the file itself
    assert not look(p.is_whiteout_of(Answer("gp_whiteout"), "gp-notes", "/bin/vi")).passed


def test_a_missing_image_fails_the_check_with_its_name(labkit_home):
    from labkit.grading import expect
    from labkit.grading.checks import run_checks

    report = run_checks("x", [expect("a", 1, p.image_contains("gp-nope", "/x"))])
    assert not report.outcomes[0].passed and "no image 'gp-nope'" in report.outcomes[0].observed


@pytest.mark.root
def test_a_commit_keeps_changes_and_leaves_the_init_layer_out(start):
    editor = start(name="gp-editor")
    editor.exec(["sh", "-c", "echo milk > /root/todo"]).check()
    editor.commit("gp-commit")
    assert look(p.image_contains("gp-commit", "/root/todo")).passed
    assert look(p.commit_excludes_init("gp-commit", "busybox")).passed


@pytest.mark.root
def test_a_layer_holding_an_init_file_is_not_a_clean_commit(start):
    """labkit's own commit leaves the init files out; a "commit" made another way (the whole
    read-write tree, /etc/hostname included, stored as a layer) must fail the check."""
    editor = start(name="gp-editor2")
    editor.exec(["sh", "-c", "echo milk > /root/todo; echo other > /etc/hostname"]).check()
    store = editor.image.store
    with store.scratch() as scratch:
        # the edit went to the container's own hostname file (bound over the placeholder):
        # the forged layer takes it from there
        for relative, source in (("root/todo", editor.upper_dir / "root" / "todo"),
                                 ("etc/hostname", editor.files.etc_file("hostname"))):
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            (scratch / relative).write_bytes(source.read_bytes())
        digest = store.add_layer(scratch)
    store.save_image("gp-whole-upper", editor.image.layers + [digest], editor.image.config, [])
    missed = look(p.commit_excludes_init("gp-whole-upper", "busybox"))
    assert not missed.passed and missed.observed == "the committed layer holds /etc/hostname"
    assert look(p.image_contains("gp-whole-upper", "/root/todo")).passed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.root
def test_containers_on_a_bridge_reach_each_other_by_name(start):
    web = start(name="gp-web", network="bridge")
    client = start(name="gp-client", network="bridge")
    alone = start(name="gp-alone")
    assert look(p.same_bridge(web, client)).passed
    assert look(p.reaches_by_name(client, web)).passed
    assert not look(p.same_bridge(web, alone)).passed
    assert not look(p.reaches_by_name(alone, web, deadline=1)).passed
    sidecar = start(name="gp-sidecar", network="container:gp-web")
    assert look(p.same_namespace(sidecar, web, "net")).passed
    assert not look(p.same_namespace(client, web, "net")).passed


@pytest.mark.root
def test_a_published_port_answers_on_loopback(start):
    port = free_port()
    start(name="gp-site", network="bridge", publish=[f"{port}:80"],
          command=["sh", "-c", "mkdir -p /srv && echo hello > /srv/index.html && exec httpd -f -p 80 -h /srv"])
    assert look(p.port_answers(port, "hello")).passed
    assert not look(p.port_answers(port, "goodbye", deadline=0.5)).passed
    closed = look(p.port_answers(free_port(), deadline=0.5))
    assert not closed.passed and "refused" in closed.observed.lower()


@pytest.mark.root
def test_a_container_that_is_not_running_fails_the_check_with_its_name(start):
    from labkit.grading import expect
    from labkit.grading.checks import run_checks

    report = run_checks("x", [expect("a", 1, p.hostname("gp-never-started", "x"))])
    assert report.outcomes[0].observed == "no running container named 'gp-never-started' in this notebook"
    stopped = start(name="gp-stopped", command=["true"])
    stopped.wait()
    report = run_checks("x", [expect("a", 1, p.hostname(stopped, "x"))])
    assert report.outcomes[0].observed == "container gp-stopped is not running (exited 0)"


@pytest.mark.root
def test_the_root_and_proc_a_process_sees(start):
    import subprocess

    box = start(name="gp-root")
    root, proc = look(p.root_filesystem(box)), look(p.own_proc(box))
    assert root.passed and root.observed == "its / is a mount of type overlay", root.observed
    assert proc.passed and "it is PID 1 there" in proc.observed, proc.observed
    # a process of the host's, found by its PID: the host's root and the host's /proc
    plain = subprocess.Popen(["sleep", "600"])
    try:
        root, proc = look(p.root_filesystem(plain.pid)), look(p.own_proc(plain.pid))
        assert not root.passed and "the host's own root" in root.observed, root.observed
        assert not proc.passed and f"it is PID {plain.pid} there" in proc.observed, proc.observed
    finally:
        plain.kill()
        plain.wait()


@pytest.mark.root
def test_a_file_is_read_as_the_process_sees_it(start):
    box = start(name="gp-hosts")
    assert not look(p.file_in_root(box, "/etc/hosts", "10.0.0.9")).passed
    box.exec(["sh", "-c", "echo '10.0.0.9 db' >> /etc/hosts"]).check()
    seen = look(p.file_in_root(box, "/etc/hosts", "10.0.0.9"))
    assert seen.passed and "'10.0.0.9 db'" in seen.observed, seen.observed
    assert look(p.file_in_root(box, "/no/such", "x")).observed == "it has no /no/such"
