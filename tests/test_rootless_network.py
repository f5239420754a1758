"""Rootless networking through pasta, as a real ordinary user: a port published on the
host's loopback reaches a server inside a user + network namespace the user made, and
from inside, the namespace's gateway address reaches a server on the host's loopback
(pasta's host-loopback mapping). Nothing else is reached: the servers are the test's, on
127.0.0.1 and inside its own namespace. Without pasta the same namespace reaches nothing."""

import json
import os
import shutil
import textwrap

import pytest

import published_port

from labkit.net import pasta
from labkit.net.ports import PortMapping

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run as the student: a namespace of theirs (unshare -Urn), a one-shot server inside it,
# pasta started and stopped with labkit.net.pasta, and the connections both ways.
AS_STUDENT = textwrap.dedent("""
    import json, os, socket, subprocess, sys, tempfile, textwrap, time
    from labkit.net import pasta
    from labkit.net.ports import PortMapping

    host_port, use_pasta = int(sys.argv[1]), sys.argv[2] == "pasta"
    result = {}

    def inside(pid, code):
        return ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(pid), sys.executable, "-B", "-c", code]

    # A server on the host's loopback: what the container reaches through the gateway.
    host_server = socket.create_server(("127.0.0.1", 0))
    host_server.settimeout(10)
    namespace = subprocess.Popen(["unshare", "-Urn", "sleep", "60"])
    try:
        mine = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{namespace.pid}/ns/net") == mine:
            time.sleep(0.01)
        forwarder = None
        if use_pasta:
            forwarder = pasta.start(namespace.pid, [PortMapping(host_port, 8080)],
                                    pid_file=os.path.join(tempfile.mkdtemp(), "pasta.pid"))
            result["pasta_running"] = pasta.running(forwarder.pid)
        # Published: a server inside, a client on the host's loopback.
        server = subprocess.Popen(inside(namespace.pid, (
            "import socket; s = socket.create_server(('0.0.0.0', 8080)); s.settimeout(10);"
            "c, _ = s.accept(); c.sendall(b'hello from the namespace'); c.close()")))
        received = ""
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", host_port), timeout=2) as client:
                    received = client.recv(100).decode()
                if received:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        result["published"] = received
        server.kill(); server.wait()
        # Outbound: from inside, the gateway's address at the host server's port.
        outbound = subprocess.run(inside(namespace.pid, textwrap.dedent(f'''
            import socket, struct
            gateway = None
            for line in open("/proc/net/route").read().splitlines()[1:]:
                fields = line.split()
                if fields[1] == "00000000":
                    gateway = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
            try:
                socket.create_connection((gateway or "192.0.2.1", {host_server.getsockname()[1]}), timeout=3).sendall(b"hi")
                print("connected", gateway)
            except OSError as error:
                print("refused", gateway, error.strerror)
        ''')), capture_output=True, text=True)
        result["outbound"] = outbound.stdout.strip() + outbound.stderr.strip()
        if result["outbound"].startswith("connected"):
            connection, _ = host_server.accept()
            result["host_server_got"] = connection.recv(10).decode()
        if forwarder is not None:
            pasta.stop(forwarder)
            result["pasta_after_stop"] = pasta.running(forwarder.pid)
    finally:
        namespace.kill(); namespace.wait()
    print(json.dumps(result))
""")


@pytest.fixture
def student():
    from throwaway_users import throwaway_user

    if shutil.which("pasta") is None or shutil.which("nsenter") is None:
        pytest.skip(f"pasta or nsenter is missing: {pasta.INSTALL}")
    from throwaway_users import why_user_cannot_run_this_checkout

    if why_user_cannot_run_this_checkout():
        pytest.skip(why_user_cannot_run_this_checkout())
    with throwaway_user() as user:
        yield user


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_student(student, mode):
    done = student.run(["/usr/bin/python3", "-B", "-c", AS_STUDENT, str(free_port()), mode],
                       env={"PYTHONPATH": REPO}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.root
def test_a_published_port_and_outbound_traffic_work_through_pasta(student):
    result = as_student(student, "pasta")
    assert result["pasta_running"]
    assert result["published"] == "hello from the namespace"
    assert result["outbound"].startswith("connected"), result
    assert result["host_server_got"] == "hi"
    assert result["pasta_after_stop"] is False


@pytest.mark.root
def test_without_pasta_the_namespace_reaches_nothing(student):
    result = as_student(student, "none")
    assert result["published"] == ""
    assert result["outbound"].startswith("refused"), result


def test_pasta_arguments_forward_only_what_was_published(monkeypatch):
    monkeypatch.setattr(pasta.shutil, "which", lambda name: f"/usr/bin/{name}")
    command = pasta.arguments(4242, [PortMapping(8080, 80)], "/run/x.pid")
    assert command[-1] == "4242"
    assert command[command.index("--tcp-ports") + 1] == "127.0.0.1/8080:80"
    for option in ("--udp-ports", "--tcp-ns", "--udp-ns"):
        assert command[command.index(option) + 1] == "none"
    nothing = pasta.arguments(1, [], "/run/x.pid")
    assert nothing[nothing.index("--tcp-ports") + 1] == "none"
    assert "--no-map-gw" in pasta.arguments(1, [], "/run/x.pid", host_loopback=False)


# A rootless container with --net pasta: a published port answered by a server inside it,
# and from inside, the gateway reaching a server on the host's loopback.
CONTAINER = published_port.SOURCE + textwrap.dedent("""
    import json, os, socket, sys, time
    from labkit.runtime import Container, run

    host_port = int(sys.argv[1])
    result = {"uid": os.geteuid()}
    host_server = socket.create_server(("127.0.0.1", 0))
    host_server.settimeout(30)
    box = Container(command=["sh", "-c", "echo hello from the container | nc -l -p 8080"],
                    network="pasta", publish=[f"{host_port}:8080"]).start(detach=True)
    try:
        result["published"] = first_answer(host_port)
    finally:
        box.remove()
    from labkit.net.pasta import running
    result["pasta_left"] = running(box.network.pasta.pid)
    port = host_server.getsockname()[1]
    out = run(f"gw=$(ip route | awk '/default/ {{print $3}}'); echo hi | nc -w 3 $gw {port} && echo sent $gw",
              network="pasta")
    result["outbound"] = out.stdout.strip()
    if out.stdout.startswith("sent"):
        connection, _ = host_server.accept()
        result["host_server_got"] = connection.recv(10).decode().strip()
    print(json.dumps(result))
""")


def run_container_script(student, prefix=()):
    import sysconfig

    done = student.run([*prefix, "/usr/bin/python3", "-B", "-c", CONTAINER, str(free_port())],
                       env={"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}",
                            "LABKIT_HOME": os.path.join(student.home, "labkit")}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.root
def test_a_rootless_container_on_net_pasta_publishes_a_port_and_reaches_the_hosts_loopback(student):
    result = run_container_script(student)
    assert result["published"] == "hello from the container", result
    assert result["pasta_left"] is False, result         # its pasta ended with it
    assert result["outbound"].startswith("sent"), result
    assert result["host_server_got"] == "hi", result


# The labkit kernel runs as root of labkit's user namespace (`labkit unshare`): there pasta
# could not open the container's /proc/PID/ns/* (it drops its capabilities first, and the
# container process, root of the same namespace, has them all); it is handed the network
# namespace as an inherited descriptor instead.
@pytest.mark.root
def test_net_pasta_works_as_root_of_labkits_user_namespace_as_the_kernel_runs(student):
    result = run_container_script(student, prefix=("/usr/bin/python3", "-B", "-m", "labkit", "unshare", "--"))
    assert result["uid"] == 0, result                    # as the kernel: root of labkit's namespace
    assert result["published"] == "hello from the container", result
    assert result["pasta_left"] is False, result
    assert result["outbound"].startswith("sent"), result
    assert result["host_server_got"] == "hi", result


# As the student: a --net pasta container with a published port, its pasta's PID and the
# container's printed, then the script waits to be killed.
HELD = textwrap.dedent("""
    import json, sys
    from labkit.runtime import Container

    box = Container(command=["sh", "-c", "while true; do echo hi | nc -l -p 8080; done"],
                    network="pasta", publish=[f"{sys.argv[1]}:8080"]).start(detach=True)
    print(json.dumps({"pasta": box.network.pasta.pid, "container": box.pid}), flush=True)
    sys.stdin.readline()
""")


@pytest.mark.root
def test_a_killed_owner_leaves_no_pasta_no_container_and_no_namespace(student):
    """pasta holds the container's network namespace open and never ends by itself: it
    must go with the container when the owner is killed (SIGKILL: no atexit, no detach)."""
    import signal
    import socket
    import subprocess
    import sysconfig

    from test_rootless_bridge import alive, nothing_left_of

    port = free_port()

    def become():
        os.setgroups([])
        os.setgid(student.gid)
        os.setuid(student.uid)

    process = subprocess.Popen(["/usr/bin/python3", "-B", "-c", HELD, str(port)],
                               env=student.environment({"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}",
                                                        "LABKIT_HOME": os.path.join(student.home, "labkit")}),
                               cwd=student.home, preexec_fn=become,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line, process.communicate(timeout=60)[1]
        held = json.loads(line)
        assert pasta.running(held["pasta"]) and alive(held["container"]), held
        netns = os.stat(f"/proc/{held['container']}/ns/net").st_ino
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert nothing_left_of(student) == []             # no pasta, no container process, no helper
    assert not pasta.running(held["pasta"]) and not alive(held["container"])
    holders = []                                      # nothing anywhere holds the namespace open
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == netns:
                holders.append(pid)
        except OSError:
            pass
    assert holders == []
    with pytest.raises(OSError):                      # and the host port is free again, unserved
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# The owner attaches a --net pasta network and is killed while pasta starts (here a pasta
# that never gets ready: only labkit's side is under test, no namespace is made).
MID_START = textwrap.dedent("""
    import time
    from labkit.net import hooks, pasta

    def start(target_pid, ports, pid_file):
        print(pid_file, flush=True)
        time.sleep(600)

    pasta.start = start
    hooks.attach(hooks.ContainerNetwork("pasta"), 1, "box")
""")


def test_an_owner_killed_while_pasta_starts_leaves_no_pid_directory(tmp_path):
    """pasta's PID file is in a directory of the owner's LABKIT_HOME, named after the owner:
    killed before it could remove it, the sweep (`labkit gc`, every helper start) does; it
    used to be a /tmp/labkit-pasta-* nobody removed."""
    import subprocess
    import sys

    from labkit.net import sweep

    home, tmp = tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    owner = subprocess.Popen([sys.executable, "-B", "-c", MID_START], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "LABKIT_HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": REPO})
    try:
        pid_file = owner.stdout.readline().strip()
    finally:
        owner.kill()
        owner.wait()
    assert pid_file, "the owner never reached pasta's start"
    directory = os.path.dirname(pid_file)
    assert os.path.isdir(directory)                    # what the killed owner left
    swept = sweep(home)
    assert not os.path.exists(directory) and len(swept) == 1, swept
    assert os.listdir(tmp) == []                       # and nothing in the shared temp dir
