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

pasta holds the namespace open (a descriptor of it) and never ends by itself, so it
runs in the foreground as the caller's child with a parent-death signal: `stop` ends it,
and a killed caller (an owner killed with SIGKILL, no atexit run) takes it along, as the
helper's teardown takes the container. The death signal follows the thread that forked,
so the child is forked by one long-lived thread of labkit's, never by a caller's thread
that may end first. pasta writes its PID file once the namespace is set up and the ports
are bound: a successful `start` means the ports are ready.

Started as uid 0 of labkit's user namespace (the labkit kernel, `labkit unshare`), pasta
stays uid 0 (`--runas` changes nothing there: it drops to "nobody" only as the host's
root) but first drops its capabilities to the few it needs (CAP_SYS_ADMIN, CAP_NET_ADMIN,
CAP_NET_BIND_SERVICE). Opening `/proc/PID/ns/user` or `ns/net` needs ptrace access to PID,
and within one user namespace the kernel grants that only to a caller whose effective
capabilities cover the target's permitted ones (or who has CAP_SYS_PTRACE): the container
process, root of the namespace, has them all, so pasta fails with "Couldn't open user
namespace /proc/PID/ns/user: Permission denied". From a terminal it works: pasta runs in
the parent user namespace as its owner, which has every capability in it. So as uid 0,
pasta is handed the network namespace as a descriptor it inherits (`--netns
/proc/self/fd/N`: a process may always open its own) and joins no user namespace (it is
in the target's already), keeping the CAP_SYS_ADMIN setns needs.
"""

import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from labkit.errors import ConfigError, HostError
from labkit.linux.rootless import running_rootless

INSTALL = "install Debian's passt package (apt-get install passt; `make setup` does)"


@dataclass
class Pasta:
    """A running pasta: its PID, the namespace's, and the ports it forwards."""
    pid: int
    target_pid: int
    ports: list
    process: subprocess.Popen | None = None     # our child (None: known by its PID only)

    def __repr__(self):
        return f"<Pasta {self.pid} for {self.target_pid} ports {', '.join(map(str, self.ports)) or '-'}>"


def program() -> str:
    path = shutil.which("pasta")
    if path is None:
        raise HostError(f"rootless published ports and outbound traffic need pasta, which is not installed; {INSTALL}")
    return path


def arguments(target_pid: int, ports, pid_file: str, host_loopback: bool = True, netns_fd: int | None = None,
              interface: str | None = None) -> list:
    """pasta's command line: only the TCP ports asked for (none: "none", where pasta's own
    default would forward every port bound inside), nothing from the namespace back to the host.
    Always in the foreground; with `pid_file`, pasta writes its PID there once set up. With `netns_fd`, the namespace is that inherited descriptor (see the module's text)."""
    tcp = ",".join(f"{port.host_ip}/{port.host_port}:{port.container_port}" for port in ports) or "none"
    command = [program(), "--config-net", "--quiet", "--foreground", *(["--pid", pid_file] if pid_file else []),
               "--tcp-ports", tcp, "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none"]
    if not host_loopback:
        command.append("--no-map-gw")
    if interface:
        command += ["--ns-ifname", interface]
    if netns_fd is not None:
        return command + ["--netns", f"/proc/self/fd/{netns_fd}"]
    return command + [str(target_pid)]


def start(target_pid: int, ports=(), pid_file: str = "", host_loopback: bool = True,
          interface: str | None = None, timeout: float = 60.0) -> Pasta:
    """pasta for the network namespace of `target_pid` (joined with its user namespace,
    unless we run as uid 0), our child, killed if we are (see the module's text). `ports`
    are `labkit.net.ports.PortMapping`s; `pid_file` is where pasta writes its PID once set
    up (a file in a directory of the caller's); `interface` names its interface inside
    (default: the host's uplink's name)."""
    ports = list(ports)

    def written():
        try:
            return os.path.getsize(pid_file) > 0
        except OSError:
            return False

    try:
        process, errors = _spawn(target_pid, ports, pid_file, host_loopback, interface, written, timeout)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
    if process.returncode is not None:
        said = _said(process, errors)
        if "bind" in said.lower() or "in use" in said.lower():
            raise ConfigError(f"--publish {', '.join(map(str, ports))}: a host port is taken ({said}); "
                              "pick another host port")
        raise HostError(f"pasta could not set up the network of process {target_pid}: {said}")
    errors.close()
    return Pasta(process.pid, target_pid, ports, process)


def start_tied(target_pid: int, interface: str, is_ready, timeout: float = 60.0) -> Pasta:
    """pasta (no ports) for a caller that knows when its setup is done (`is_ready()`, asked
    until it says yes), without a PID file: the `labkit-netns` keeper."""
    process, errors = _spawn(target_pid, (), "", True, interface, is_ready, timeout)
    if process.returncode is not None:
        raise HostError(f"pasta could not set up the network of process {target_pid}: {_said(process, errors)}")
    errors.close()
    return Pasta(process.pid, target_pid, [], process)


_forker = None          # the long-lived thread that forks every pasta (see the module's text)
_forker_lock = threading.Lock()


def _spawn(target_pid, ports, pid_file, host_loopback, interface, is_ready, timeout):
    """(pasta in the foreground, our child with a death signal; its stderr, a file), once
    `is_ready()` or ended (its `returncode` set; the file says why)."""
    global _forker
    from labkit.linux import syscalls

    inside = os.geteuid() == 0 and running_rootless()     # root of labkit's user namespace
    netns_fd = os.open(f"/proc/{target_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC) if inside else None
    try:
        command = arguments(target_pid, ports, pid_file, host_loopback, netns_fd, interface)

        # stderr a file, not a pipe: pasta may write after we stop reading, and must not block or die of it
        errors = tempfile.TemporaryFile()

        def fork():
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                    pass_fds=() if netns_fd is None else (netns_fd,),
                                    preexec_fn=lambda: syscalls.prctl_set_pdeathsig(signal.SIGKILL))
        with _forker_lock:
            if _forker is None:
                _forker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="labkit-pasta")
        process = _forker.submit(fork).result()
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
    deadline = time.monotonic() + timeout
    while process.poll() is None and not is_ready():
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
        time.sleep(0.01)
    return process, errors


def _said(process, errors) -> str:
    errors.seek(0)
    said = " ".join(errors.read().decode(errors="replace").split())
    errors.close()
    return said or f"exit status {process.returncode}"



def stop(pasta: Pasta, timeout: float = 5.0) -> None:
    """End pasta (it is ours: our child, or the PID it wrote, checked to still be a pasta)
    and wait for it."""
    if pasta.process is not None:
        pasta.process.terminate()
        try:
            pasta.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pasta.process.kill()
            pasta.process.wait()
        return
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
