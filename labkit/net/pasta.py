"""Rootless published ports and outbound traffic through `pasta` (Debian's `passt`
package), as rootless podman does.

Why a helper program: an ordinary user owns no interface of the host's network namespace
and cannot plug a veth into it. pasta, run as that user, joins the container's user and
network namespaces, gives it an `eth0` copying the host's address and routes, and
carries traffic with ordinary sockets of the user's own: a port published on the host
(`-p 127.0.0.1:8080:80`) is a socket pasta listens on, whose connections it opens again
inside the namespace; the container's outbound connections become the user's own
connections on the host. A connection to the namespace's gateway address reaches the
host's loopback (pasta maps it, unless `host_loopback=False`), which is how a container
reaches a server the user runs on 127.0.0.1.

pasta puts itself in the background once the namespace is set up and the ports are
bound, so a successful `start` means the ports are ready. It ends on its own when the
namespace does; `stop` ends it sooner.
"""

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from labkit.errors import ConfigError, HostError

INSTALL = "install Debian's passt package (apt-get install passt; `make setup` does)"


@dataclass
class Pasta:
    """A running pasta: its PID, the namespace's, and the ports it forwards."""
    pid: int
    target_pid: int
    ports: list

    def __repr__(self):
        return f"<Pasta {self.pid} for {self.target_pid} ports {', '.join(map(str, self.ports)) or '-'}>"


def program() -> str:
    path = shutil.which("pasta")
    if path is None:
        raise HostError(f"rootless published ports and outbound traffic need pasta, which is not installed; {INSTALL}")
    return path


def arguments(target_pid: int, ports, pid_file: str, host_loopback: bool = True) -> list:
    """pasta's command line: only the TCP ports asked for (none: "none", where pasta's own
    default would forward every port bound inside), nothing from the namespace back to the host."""
    tcp = ",".join(f"{port.host_ip}/{port.host_port}:{port.container_port}" for port in ports) or "none"
    command = [program(), "--config-net", "--quiet", "--pid", pid_file,
               "--tcp-ports", tcp, "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none"]
    if not host_loopback:
        command.append("--no-map-gw")
    return command + [str(target_pid)]


def start(target_pid: int, ports=(), pid_file: str = "", host_loopback: bool = True) -> Pasta:
    """pasta for the network namespace of `target_pid` (joined with its user namespace).
    `ports` are `labkit.net.ports.PortMapping`s; `pid_file` is where pasta writes its PID
    (a file in the container's directory)."""
    ports = list(ports)
    command = arguments(target_pid, ports, pid_file, host_loopback)
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split()) or f"exit status {done.returncode}"
        if "bind" in said.lower() or "in use" in said.lower():
            raise ConfigError(f"--publish {', '.join(map(str, ports))}: a host port is taken ({said}); "
                              "pick another host port")
        raise HostError(f"pasta could not set up the network of process {target_pid}: {said}")
    with open(pid_file) as handle:
        pid = int(handle.read().strip())
    os.unlink(pid_file)
    return Pasta(pid, target_pid, ports)


def stop(pasta: Pasta, timeout: float = 5.0) -> None:
    """End pasta (it is ours: the PID it wrote, checked to still be a pasta) and wait for it."""
    deadline = time.monotonic() + timeout
    while running(pasta.pid):
        try:
            os.kill(pasta.pid, signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def running(pid: int) -> bool:
    """Is `pid` a pasta still (not a reused PID)?"""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().startswith(("pasta", "passt"))   # Debian execs passt.avx2 where the CPU has it
    except OSError:
        return False
