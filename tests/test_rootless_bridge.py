"""Rootless `--net bridge`, as real throw-away users: containers of one user reach each
other by name on a bridge inside a network namespace of the user's own (held by the
home's `labkit-netns` keeper, labkit/net/rootless_bridge.py); that namespace goes with the
last container, also when the owner is killed, and the keeper with the last helper;
another user's containers are out of reach. Nothing is reached but the test's own
containers, inside namespaces the test's users made."""

import json
import os
import signal
import subprocess
import sysconfig
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8471 -h /www"

# As the student: `alpha` serves its hostname; a second container fetches it by name.
# With "hold", it then prints what it made and waits for a line on stdin (or to be killed).
STUDENT = textwrap.dedent("""
    import json, os, sys
    from labkit.home import labkit_home
    from labkit.net import ipam, rootless_bridge
    from labkit.runtime import Container, run

    WEB, mode = sys.argv[1], sys.argv[2]
    result = {}
    names = ["alpha", "beta", "gamma"] if mode == "hold" else ["alpha"]
    boxes = [Container(command=["sh", "-c", WEB], name=name, hostname=name, network="bridge").start(detach=True)
             for name in names]
    try:
        result["ips"] = {box.name: box.network.ip for box in boxes}
        result["netns_holder"] = rootless_bridge.request(labkit_home(), "netns")["pid"]
        result["keeper"] = rootless_bridge.request(labkit_home(), "hello")["pid"]
        probe = ("for i in $(seq 50); do wget -q -O - http://alpha:8471/ && break; sleep 0.1; done; "
                 "grep -c alpha /etc/hosts")
        if mode == "peer":   # another user's addresses, given on the command line
            probe = (f"ping -c 1 -W 2 {sys.argv[3]} > /dev/null && echo reached {sys.argv[3]} "
                     f"|| echo not reached {sys.argv[3]}; grep -c gamma /etc/hosts")
        out = run(probe, network="bridge")
        result["probe"] = out.stdout.split()
        if mode in ("hold", "kill"):
            print(json.dumps(result), flush=True)
            sys.stdin.readline()
    finally:
        for box in boxes:
            box.remove()
    result["holder_after"] = rootless_bridge.request(labkit_home(), "netns")["pid"]
    result["leases_after"] = ipam.read_leases().leases
    print(json.dumps(result), flush=True)
""")


@pytest.fixture
def users():
    from throwaway_users import throwaway_user, why_user_cannot_run_this_checkout

    if why_user_cannot_run_this_checkout():
        pytest.skip(why_user_cannot_run_this_checkout())
    made = []
    with throwaway_user() as first, throwaway_user() as second:
        made += [first, second]
        yield made
        for user in made:
            assert nothing_left_of(user) == [], f"processes of {user.name} left behind"


def nothing_left_of(user, patience=60):
    """The user's processes (its own uid and its range), polled until none is left; what
    is still there after `patience` seconds of polling (a load bound, not a timing claim)."""
    from throwaway_users import processes_of, subordinate_range

    first, count = subordinate_range(user.name, "/etc/subuid")
    uids = {user.uid, *range(first, first + count)}
    deadline = time.monotonic() + patience
    while processes_of(uids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [_command_of(pid) for pid in processes_of(uids)]


def _command_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read().replace(b"\0", b" ").decode().strip()
        return f"{pid} {command or '(exited)'}"
    except OSError:
        return f"{pid} (gone)"


def environment():
    return {"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}"}


def student_run(user, *arguments):
    done = user.run(["/usr/bin/python3", "-B", "-c", STUDENT, WEB, *arguments], env=environment(), timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def student_start(user, mode, *arguments):
    """STUDENT in the background; its first JSON line once its containers run."""
    def become():
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)

    process = subprocess.Popen(["/usr/bin/python3", "-B", "-c", STUDENT, WEB, mode, *arguments],
                               env=user.environment(environment()), cwd=user.home, preexec_fn=become,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.kill()
        pytest.fail(f"the student's script ended early: {process.communicate()[1]}")
    return process, json.loads(line)


def alive(pid):
    return pid is not None and os.path.exists(f"/proc/{pid}")


@pytest.mark.root
def test_containers_of_a_user_reach_each_other_by_name_and_the_namespace_goes_with_the_last(users):
    student = users[0]
    result = student_run(student, "once")
    assert result["probe"] == ["alpha", "1"], result   # its page by name, and its name in /etc/hosts
    assert result["netns_holder"] and result["keeper"], result
    assert result["holder_after"] is None, result       # the bridge's namespace went with the last container
    assert result["leases_after"] == {}, result
    assert nothing_left_of(student) == []                # and the keeper with the last helper
    assert not alive(result["keeper"]) and not alive(result["netns_holder"])


@pytest.mark.root
def test_a_killed_owner_leaves_no_bridge_namespace_and_no_keeper(users):
    student = users[0]
    process, result = student_start(student, "kill")
    assert result["probe"] == ["alpha", "1"], result
    assert alive(result["netns_holder"]) and alive(result["keeper"])
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    process.stderr.close()
    process.stdin.close()
    assert nothing_left_of(student) == []
    assert not alive(result["netns_holder"]) and not alive(result["keeper"])


@pytest.mark.root
def test_one_users_bridge_does_not_reach_another_users_containers(users):
    first, second = users
    process, held = student_start(first, "hold")
    try:
        gamma = held["ips"]["gamma"]
        # The second user's own bridge has alpha and the probing container, at the first
        # two addresses; gamma's (the first user's third container) is nobody on it.
        result = student_run(second, "peer", gamma)
        assert result["probe"] == ["not", "reached", gamma, "0"], result
        # Without the separation (the first user's own bridge), the same address answers.
        control = subprocess.run(["nsenter", "--net", f"--target={held['netns_holder']}",
                                  "busybox", "ping", "-c", "1", "-W", "2", gamma], capture_output=True, text=True)
        assert control.returncode == 0, control.stdout + control.stderr
    finally:
        process.communicate("done\n", timeout=120)
    assert nothing_left_of(first) == [] and nothing_left_of(second) == []


def test_a_rootless_bridge_containers_published_port_is_refused_naming_pasta(monkeypatch):
    from labkit.errors import ConfigError
    from labkit.net import hooks
    from labkit.runtime.spec import ContainerSpec

    monkeypatch.setattr(hooks, "running_rootless", lambda: True)
    spec = ContainerSpec(command=["true"], network="bridge", publish=["8080:80"]).validated()
    who = hooks.Who(id="0" * 64, name="web", hostname="web", hosts_file="/nonexistent")
    with pytest.raises(ConfigError, match="not published.*--net pasta"):
        hooks.prepare(spec, who, "")
