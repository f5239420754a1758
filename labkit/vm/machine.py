"""`labkit.vm.run`: boot a throwaway VM on the host's own root, run one command, power off.

The guest sees the host's files read-only with a tmpfs overlay on top (so it can
write anywhere and nothing reaches the host), a fresh /tmp, cgroup v2 with every
controller enabled, and optionally one host directory shared read-write.
"""

import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ConfigError, HostError
from labkit.units import parse_bytes
from labkit.vm import cache, guest, host, initramfs
from labkit.vm.accel import ACCEL_VARIABLE, Acceleration, choose_acceleration
from labkit.vm.install import build_initramfs
from labkit.vm.leftovers import new_run_dir, sweep_leftovers_of_dead_runs
from labkit.vm.qemu import QemuProcess, qemu_command

DEFAULT_TIMEOUT = 600
KVM_BOOT_TIMEOUT = 60
GUEST_LABKIT_HOME = "/tmp/labkit"
# What every labkit process in a guest gets unless told otherwise. On a host the runtime's
# helper must answer its first ping within 30 s; a cold helper in an emulated guest on a
# busy host (its imports read through 9p) may take minutes. Only a helper alive but silent
# waits this long: one that dies is noticed at once.
GUEST_DEFAULTS = {"LABKIT_HELPER_TIMEOUT": "600"}
# Host paths the guest replaces with its own filesystems: a cwd under them is not
# the same directory inside.
_GUEST_OWN = ("/tmp", "/run", "/proc", "/sys", "/dev")


@dataclass(frozen=True)
class VMResult:
    exit_code: int
    output: str               # what the command wrote to stdout and stderr, interleaved
    boot_seconds: float       # QEMU start until the command starts
    total_seconds: float      # QEMU start until QEMU exited
    qemu_peak_rss_bytes: int  # host memory of the QEMU process at its peak
    accel: str                # "kvm" or "tcg"


class VMTimeout(HostError):
    """The command did not finish in time; QEMU was killed."""

    def __init__(self, message, output=""):
        super().__init__(message)
        self.output = output


class GuestFailed(HostError):
    """QEMU exited before reporting the command's exit status."""

    def __init__(self, message, booted):
        super().__init__(message)
        self.booted = booted


def run(command, memory="1g", cpus=2, rw_dir=None, timeout=DEFAULT_TIMEOUT, cwd=None, env=None, stream=None,
        root_cache="none") -> VMResult:
    """Run `command` (a list of words) in a fresh VM and return how it went.

    `rw_dir` is a host directory shared read-write at the same path inside; `env`
    adds to the guest's environment; `stream`, a text file, gets the output live;
    `root_cache="loose"` lets the guest keep what it read of the host's root (a command
    that imports much Python twice reads it once through 9p; host files changed while it
    runs may go unseen: see guest.stage1_init).
    """
    command = [str(word) for word in command]
    if not command:
        raise ConfigError("labkit vm run needs a command, e.g. `labkit vm run -- uname -r`")
    kernel = ready_kernel()
    rw_dir = _shared_directory(rw_dir)
    request = dict(
        kernel=kernel, command=command, memory_mib=_memory_mib(memory), cpus=_whole_cpus(cpus),
        rw_dir=rw_dir, timeout=timeout, stream=stream,
        cwd=_guest_cwd(cwd, rw_dir), environment=_guest_environment(env), root_cache=root_cache,
    )
    acceleration = choose_acceleration()
    try:
        return _boot_and_run(acceleration=acceleration, **request)
    except GuestFailed as failure:
        # A /dev/kvm can look usable and still refuse a stock kernel; fall back
        # once to emulation, unless the user asked for KVM.
        if acceleration.name != "kvm" or failure.booted or os.environ.get(ACCEL_VARIABLE):
            raise
        fallback = Acceleration("tcg", f"software emulation because KVM failed to boot: {failure}")
        return _boot_and_run(acceleration=fallback, **request)


def ready_kernel() -> cache.CachedKernel:
    if host.qemu_binary() is None:
        raise HostError(f"{host.QEMU} is not installed, so no VM can start; run "
                        f"`sudo apt-get install {' '.join(host.QEMU_PACKAGES)}`, then `labkit vm setup`")
    kernel = cache.cached_kernel()
    if kernel is None:
        raise HostError(f"no VM kernel is cached in {cache.vm_home()}; run `labkit vm setup` first")
    if not kernel.initramfs_is_current():
        # labkit changed what runs in the guest since setup: cheap to rebuild here.
        kernel = build_initramfs(kernel, say=lambda line: None)
    return kernel


def _boot_and_run(kernel, command, memory_mib, cpus, rw_dir, timeout, stream, cwd, environment, acceleration,
                  root_cache="none"):
    token = secrets.token_hex(8)
    console = Console(token, stream)
    sweep_leftovers_of_dead_runs()
    workdir = new_run_dir()
    qemu = None
    try:
        initrd = workdir / "initrd.cpio"
        with open(initrd, "wb") as archive:
            archive.write(_base_initramfs(kernel, root_cache))
            archive.write(initramfs.build_run(command, cwd, environment, token, rw_dir))
        argv = qemu_command(host.qemu_binary(), kernel.vmlinux, initrd, memory_mib, cpus, acceleration, rw_dir)
        deadline = time.monotonic() + timeout
        qemu = QemuProcess(argv, console.read_line)
        if acceleration.name == "kvm":
            _wait_for_kvm_boot(qemu, console, min(deadline, time.monotonic() + KVM_BOOT_TIMEOUT))
        if not qemu.wait(max(0.0, deadline - time.monotonic())):
            qemu.stop()
            raise VMTimeout(
                f"the command did not finish within {timeout:g} s, so QEMU (pid {qemu.pid}) was killed; "
                f"give a longer timeout (--timeout) if it needs more time.\n{console.describe()}",
                output=console.output(),
            )
    finally:
        if qemu is not None:
            qemu.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if console.exit_code is None:
        raise GuestFailed(_failure_message(console, qemu), booted=console.boot_seconds is not None)
    return VMResult(
        exit_code=console.exit_code,
        output=console.output(),
        boot_seconds=console.boot_seconds,
        total_seconds=qemu.lifetime_seconds,
        qemu_peak_rss_bytes=qemu.peak_rss_bytes,
        accel=acceleration.name,
    )


def _base_initramfs(kernel, root_cache) -> bytes:
    """The cached initramfs, or one whose /init mounts the host's root with `root_cache`."""
    if root_cache == "none":
        return kernel.initramfs.read_bytes()
    busybox = host.static_busybox()
    if busybox is None:
        raise HostError("no static busybox for the guest's initramfs; run `labkit vm setup`")
    return initramfs.build_base(busybox, kernel.modules_dir, init=guest.stage1_init(root_cache))


def _wait_for_kvm_boot(qemu, console, deadline):
    # A /dev/kvm that cannot run a stock kernel (kvm_pvm) can hang silently instead
    # of failing; under KVM a boot takes about a second, so waiting a minute is ample.
    while not console.started.wait(0.1):
        if qemu.exited:
            return
        if time.monotonic() > deadline:
            qemu.stop()
            raise GuestFailed(
                f"under KVM the guest did not start the command within {KVM_BOOT_TIMEOUT} s; KVM looks "
                f"unusable here. Set {ACCEL_VARIABLE}=tcg to use software emulation",
                booted=False,
            )


class Console:
    """The guest's serial console, split into boot messages and the command's output."""

    def __init__(self, token, stream=None):
        self._start = guest.START_MARKER + token
        self._exit = guest.EXIT_MARKER + token + " "
        self._stream = stream
        self.boot_lines: list[str] = []
        self.command_lines: list[str] = []
        self.shutdown_lines: list[str] = []
        self.boot_seconds = None
        self.finished_seconds = None
        self.exit_code = None
        self.started = threading.Event()

    def read_line(self, text, seconds):
        if self.boot_seconds is None:
            if text == self._start:
                self.boot_seconds = seconds
                self.started.set()
            else:
                self.boot_lines.append(text)
        elif self.exit_code is not None:
            self.shutdown_lines.append(text)  # the kernel's "reboot: Power down"
        elif self._exit in text:
            # Output that did not end in a newline shares the marker's line.
            unterminated, _, status = text.partition(self._exit)
            if unterminated:
                self._show(unterminated)
            self.exit_code = int(status)
            self.finished_seconds = seconds
        else:
            self._show(text + "\n")

    def _show(self, chunk):
        self.command_lines.append(chunk)
        if self._stream is not None:
            self._stream.write(chunk)
            self._stream.flush()

    def output(self) -> str:
        return "".join(self.command_lines)

    def describe(self) -> str:
        if self.boot_seconds is None:
            return "The guest had not started the command yet; its console said:\n" + _tail(self.boot_lines)
        return "The command's last output:\n" + _tail(self.output().splitlines())


def _failure_message(console, qemu) -> str:
    if console.boot_seconds is None:
        what = f"the VM stopped before it could start the command (QEMU exit status {qemu.exit_status})"
    else:
        what = "the VM stopped while the command ran (a guest kernel panic or out of memory? try more -m)"
    details = console.describe()
    if qemu.stderr.strip():
        details += "\nQEMU said:\n" + _tail(qemu.stderr.splitlines())
    return f"{what}.\n{details}"


def _tail(lines, count=30) -> str:
    shown = [line for line in lines if line.strip()][-count:]
    return "\n".join("  " + line for line in shown) if shown else "  (nothing)"


def _memory_mib(memory) -> int:
    mib = parse_bytes(memory, "VM --memory") // (1 << 20)
    if mib < 128:
        raise ConfigError(f"VM --memory {memory!r} is too small to boot; give at least 128m")
    return mib


def _whole_cpus(cpus) -> int:
    if isinstance(cpus, bool) or float(cpus) != int(float(cpus)) or int(float(cpus)) < 1:
        raise ConfigError(f"VM CPUs {cpus!r} must be a whole number of at least 1")
    return int(float(cpus))


def _shared_directory(rw_dir):
    if rw_dir is None:
        return None
    path = Path(rw_dir).resolve()
    if not path.is_dir():
        raise ConfigError(f"the directory to share with the VM, {rw_dir}, does not exist; create it first")
    return path


def _guest_cwd(cwd, rw_dir) -> str:
    """The working directory inside: the caller's, when the guest sees the same one."""
    explicit = cwd is not None
    path = Path(cwd or os.getcwd()).resolve()
    if _visible_in_guest(path, rw_dir):
        return str(path)
    if explicit:
        raise ConfigError(
            f"{path} is not visible inside the VM (the guest has its own {', '.join(_GUEST_OWN)}); "
            "share it with rw_dir / -w, or pick another working directory"
        )
    return "/"


def _visible_in_guest(path: Path, rw_dir) -> bool:
    if rw_dir is not None and path.is_relative_to(rw_dir):
        return True
    return not any(path.is_relative_to(own) for own in _GUEST_OWN)


def _guest_environment(extra) -> dict:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": "/root",
        "LABKIT_HOME": GUEST_LABKIT_HOME,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        **GUEST_DEFAULTS,
    }
    environment.update(extra or {})
    return environment
