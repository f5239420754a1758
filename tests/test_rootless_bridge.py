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

import published_port

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


# As the student: a bridge container serving WORD on its port 8080, published on the host's
# 127.0.0.1:HOST_PORT; a second bridge container sends "hi" to the host's default gateway
# address, which the bridge namespace's pasta uplink maps to the host's loopback, where
# the script's own server listens. Nothing else is reached: pasta carries the traffic out
# of the user's namespace, and only to the host's loopback.
PUBLISHED = published_port.SOURCE + textwrap.dedent("""
    import json, socket, sys, time
    from labkit.home import labkit_home
    from labkit.net import rootless_bridge
    from labkit.runtime import Container, run

    host_port, word, gateway, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    host_server = socket.create_server(("127.0.0.1", 0))
    host_server.settimeout(30)
    result = {}
    box = Container(command=["sh", "-c", f"while true; do echo {word} | nc -l -p 8080; done"],
                    network="bridge", publish=[f"{host_port}:8080"]).start(detach=True)
    try:
        result["published"] = first_answer(host_port)
        state = rootless_bridge.request(labkit_home(), "netns")
        result["netns_holder"], result["uplink"] = state["pid"], state["uplink"]
        result["keeper"] = rootless_bridge.request(labkit_home(), "hello")["pid"]
        port = host_server.getsockname()[1]
        out = run(f"echo hi | nc -w 3 {gateway} {port} && echo sent", network="bridge")
        result["outbound"] = out.stdout.strip()
        if out.stdout.startswith("sent"):
            connection, _ = host_server.accept()
            result["host_server_got"] = connection.recv(10).decode().strip()
        if mode == "hold":
            print(json.dumps(result), flush=True)
            sys.stdin.readline()
    finally:
        box.remove()
    try:
        result["holder_after"] = rootless_bridge.request(labkit_home(), "netns")["pid"]
    except Exception as error:   # the keeper was killed (a test's doing): said, not raised
        result["holder_after"] = str(error)
    print(json.dumps(result), flush=True)
""")


def host_gateway():
    """The host's default IPv4 gateway (pasta maps it to the host's loopback), or skip."""
    import socket
    import struct

    with open("/proc/net/route") as routes:
        for line in routes.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000" and int(fields[3], 16) & 2:
                return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    pytest.skip("the host has no default IPv4 route: pasta has nothing to copy for the uplink")


def published_start(user, host_port, word, mode):
    def become():
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)

    return subprocess.Popen(["/usr/bin/python3", "-B", "-c", PUBLISHED, str(host_port), word, host_gateway(), mode],
                            env=user.environment(environment()), cwd=user.home, preexec_fn=become,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_result(process):
    line = process.stdout.readline()
    if not line:
        process.kill()
        pytest.fail(f"the student's script ended early: {process.communicate()[1]}")
    return json.loads(line)


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ip_forward():
    with open("/proc/sys/net/ipv4/ip_forward") as forward:
        return forward.read().strip()


@pytest.mark.root
def test_a_rootless_bridge_container_publishes_a_port_and_reaches_the_hosts_loopback(users):
    import shutil

    if shutil.which("pasta") is None or shutil.which("nft") is None:
        pytest.skip("pasta or nft is missing (apt-get install passt nftables; `make setup` does)")
    student = users[0]
    forwarding = ip_forward()
    process = published_start(student, free_port(), "hello", "once")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["published"] == "hello", result        # the host's 127.0.0.1:PORT reached the container
    assert result["uplink"].startswith("pasta"), result
    assert result["outbound"] == "sent", result          # and the container the host's loopback
    assert result["host_server_got"] == "hi", result
    assert result["holder_after"] is None, result        # the namespace, its pasta with it, went
    assert nothing_left_of(student) == []
    assert ip_forward() == forwarding                     # the host's own forwarding untouched


@pytest.mark.root
def test_two_users_publish_the_same_container_port_on_different_host_ports(users):
    import shutil
    import socket

    if shutil.which("pasta") is None or shutil.which("nft") is None:
        pytest.skip("pasta or nft is missing (apt-get install passt nftables; `make setup` does)")
    ports = {user.name: free_port() for user in users}
    processes = {user.name: published_start(user, ports[user.name], user.name, "hold") for user in users}
    try:
        for name, process in processes.items():
            assert first_result(process)["published"] == name
        for name, port in ports.items():     # both at once, each its own container
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                assert client.recv(100).decode().strip() == name
    finally:
        for process in processes.values():
            process.communicate("done\n", timeout=120)
    for name, process in processes.items():
        assert process.returncode == 0, process.stderr
    assert [nothing_left_of(user) for user in users] == [[], []]


@pytest.mark.root
def test_a_killed_owners_published_port_and_uplink_go(users):
    import shutil
    import socket

    if shutil.which("pasta") is None or shutil.which("nft") is None:
        pytest.skip("pasta or nft is missing (apt-get install passt nftables; `make setup` does)")
    student = users[0]
    port = free_port()
    process = published_start(student, port, "hello", "hold")
    held = first_result(process)
    assert held["published"] == "hello" and held["uplink"].startswith("pasta"), held
    process.send_signal(signal.SIGKILL)
    process.wait()
    for stream in (process.stdout, process.stderr, process.stdin):
        stream.close()
    assert nothing_left_of(student) == []                 # keeper, holder and the uplink's pasta
    with pytest.raises(OSError):                          # and the host port is free again, unserved
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.root
def test_a_killed_keeper_leaves_no_uplink_pasta_behind(users):
    """pasta holds the bridge's namespace open and does not end by itself: the keeper
    starts it as a child that is killed with it."""
    import shutil

    if shutil.which("pasta") is None or shutil.which("nft") is None:
        pytest.skip("pasta or nft is missing (apt-get install passt nftables; `make setup` does)")
    student = users[0]
    process = published_start(student, free_port(), "hello", "hold")
    try:
        held = first_result(process)
        uplink = int(held["uplink"].split()[1])
        assert alive(uplink) and alive(held["keeper"]), held
        os.kill(held["keeper"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (alive(uplink) or alive(held["netns_holder"])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(uplink) and not alive(held["netns_holder"])
    finally:
        process.communicate("done\n", timeout=120)
    assert nothing_left_of(student) == []


def test_a_udp_port_is_refused_before_anything_is_made_naming_tcp():
    from labkit.errors import ConfigError
    from labkit.runtime.spec import ContainerSpec

    with pytest.raises(ConfigError, match="only tcp"):
        ContainerSpec(command=["true"], network="bridge", publish=["8080:80/udp"]).validated()
