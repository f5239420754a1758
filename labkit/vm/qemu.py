"""The QEMU command line for one run, and the running QEMU process.

One QEMU process is one VM. `QemuProcess` starts it, reads its serial console as it
arrives, and always leaves nothing behind: `stop()` kills and reaps it, and `wait()`
reaps it with `wait4` so the kernel tells us its peak memory (ru_maxrss).
"""

import os
import shutil
import subprocess
import threading
import time

from labkit.vm import guest, host
from labkit.vm.accel import Acceleration

# quiet: only warnings reach the console, which the host reads. panic=-1 with
# -no-reboot turns any guest panic into QEMU exiting instead of hanging.
KERNEL_ARGUMENTS = "console=ttyS0 quiet panic=-1"


def qemu_command(qemu, vmlinux, initrd, memory_mib, cpus, acceleration: Acceleration, rw_dir=None) -> list[str]:
    argv = [
        qemu, "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", "stdio", "-no-reboot",
        # "pc" rather than "microvm": microvm hung in 2 of 4 boots here.
        "-M", "pc", *acceleration.qemu_arguments(),
        "-m", f"{memory_mib}M", "-smp", str(cpus),
        "-bios", str(host.QBOOT),
        "-kernel", str(vmlinux), "-initrd", str(initrd), "-append", KERNEL_ARGUMENTS,
        # The host's root, read-only: the guest overlays a tmpfs on it. remap keeps
        # inode numbers unique across the host's many filesystems under /.
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=root,mount_tag={guest.ROOT_TAG}",
    ]
    if rw_dir is not None:
        argv += [
            "-fsdev", f"local,id=rw,path={_qemu_escape(rw_dir)},security_model=none,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=rw,mount_tag={guest.RW_TAG}",
        ]
    return argv


def _die_with_caller(argv) -> list[str]:
    """Have the kernel kill QEMU if the thread that started it dies, even by SIGKILL.

    setpriv sets PR_SET_PDEATHSIG and execs QEMU, so no Python runs in the child
    (forking a threaded Jupyter kernel and running Python there is unsafe). The
    signal follows the starting *thread*: fine, since run() blocks in that thread
    for QEMU's whole life. leftovers.py is the backstop if it never arrives.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def _qemu_escape(path) -> str:
    # QEMU option values are comma-separated; a literal comma is written twice.
    return str(path).replace(",", ",,")


class QemuProcess:
    """A started QEMU whose console lines go to `on_line(text, seconds_since_start)`.

    `new_session`: out of the caller's process group, so that a signal to that group
    (Ctrl-C in a terminal, `labkit lab` stopping its server) does not kill the VM
    before its owner has shut down what runs in it."""

    def __init__(self, argv, on_line, new_session=False):
        self.started = time.monotonic()
        self.stderr = ""
        self.peak_rss_bytes = None
        self.exit_status = None
        self.lifetime_seconds = None
        self._process = subprocess.Popen(
            _die_with_caller(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=new_session,
        )
        self._exited = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_console, args=(on_line,), daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._reap, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self):
        return self._process.pid

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def wait(self, timeout) -> bool:
        """True when QEMU exited within `timeout` seconds."""
        if not self._exited.wait(timeout):
            return False
        for thread in self._threads:
            thread.join(timeout=5)
        return True

    def stop(self):
        """Kill QEMU if it still runs and wait until it is reaped."""
        if not self._exited.is_set():
            try:
                self._process.kill()
            except ProcessLookupError:
                pass
        self._exited.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        self._process.stdout.close()
        self._process.stderr.close()

    def _reap(self):
        # wait4 rather than Popen.wait: its rusage carries QEMU's peak RSS.
        _, status, usage = os.wait4(self._process.pid, 0)
        self._process.returncode = os.waitstatus_to_exitcode(status)
        self.exit_status = self._process.returncode
        self.peak_rss_bytes = usage.ru_maxrss * 1024
        self.lifetime_seconds = time.monotonic() - self.started
        self._exited.set()

    def _read_console(self, on_line):
        for raw in self._process.stdout:
            # The guest's tty turns "\n" into "\r\n".
            text = raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
            on_line(text, time.monotonic() - self.started)

    def _read_stderr(self):
        self.stderr = self._process.stderr.read().decode("utf-8", "replace")


class Qmp:
    """QEMU's machine protocol on a unix socket (`-qmp unix:PATH,server=on,wait=off`),
    one command at a time; asynchronous events are skipped."""

    def __init__(self, path):
        self.path = str(path)
        self._reader = self._writer = None

    async def connect(self, process: QemuProcess, timeout=30.0):
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(self.path)
                break
            except OSError:
                if process.exited or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await self._reader.readline()   # the greeting
        await self.execute("qmp_capabilities")

    async def execute(self, command, **arguments):
        """The command's "return", or QmpError with QEMU's own error text."""
        import json

        self._writer.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        await self._writer.drain()
        while True:
            line = await self._reader.readline()
            if not line:
                raise QmpError(f"QEMU closed its monitor during {command}")
            answer = json.loads(line)
            if "error" in answer:
                raise QmpError(answer["error"].get("desc", str(answer["error"])))
            if "return" in answer:
                return answer["return"]

    async def human(self, command_line, success="") -> str:
        """An HMP command (hostfwd_add has no QMP form). HMP reports an error as text, so
        output other than `success` (hostfwd_add prints nothing) raises QmpError."""
        said = (await self.execute("human-monitor-command", **{"command-line": command_line})).strip()
        if said != success.strip() and not (success and success in said):
            raise QmpError(f"{command_line}: {said}")
        return said

    def close(self):
        if self._writer is not None:
            try:
                self._writer.close()
            except RuntimeError:   # its event loop is already closed: so is the socket with QEMU's exit
                pass
            self._writer = None


class QmpError(Exception):
    """QEMU refused a monitor command; the message is QEMU's."""
