"""The "Python 3 (labkit in a VM)" kernel: a Jupyter kernel provisioner whose kernel
runs inside a labkit VM (cgroup v2 with every controller, root inside).

The Jupyter server stays on the host. The first launch boots one guest for the
kernel's whole life; in it `agent.py` starts the IPython kernel, delivers signals to
it and reports its exit. The kernel's five ZeroMQ ports and the agent's control
port reach the guest through QEMU's user-mode network, forwarded from 127.0.0.1
only, with `restrict=on`: the guest reaches nothing outside. The kernel's working
directory (the notebook's) is shared read-write at the same path.

Interrupt sends SIGINT to the kernel's process group in the guest, restart starts a
new kernel process in the same guest (no reboot), shutdown kills QEMU.

Settings, from the kernelspec's `metadata.kernel_provisioner.config` or, winning
over it, the kernel's environment: memory (LABKIT_VM_MEMORY, default 1g), cpus
(LABKIT_VM_CPUS, default 2), boot_timeout (LABKIT_VM_BOOT_TIMEOUT, seconds, 300);
LABKIT_VM_ACCEL=kvm|tcg forces the acceleration.
"""

import asyncio
import collections
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jupyter_client.connect import LocalPortCache
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float, Integer, Unicode

from labkit.errors import HostError
from labkit.vm import guest, host, initramfs, machine, snapshot
from labkit.vm.accel import ACCEL_VARIABLE, Acceleration, choose_acceleration
from labkit.vm.agent import CONTROL_PORT
from labkit.vm.cpio import CpioArchive
from labkit.vm.leftovers import new_run_dir, sweep_leftovers_of_dead_runs
from labkit.vm.qemu import QemuProcess, Qmp, QmpError, qemu_command

AGENT = Path(__file__).resolve().parent / "agent.py"
# The guest's network device, on top of what mounts its root.
NETWORK_MODULES = ("virtio_net",)
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
# The guest keeps what it read from the host's root: a restart's imports come from
# guest memory, not through 9p again (see guest.stage1_init).
ROOT_CACHE = "loose"
# Told to the kernel (and shown by the labkit extension in its first cell).
BOOT_VARIABLE = "LABKIT_VM_KERNEL"


class Guest:
    """One booted (or restored) VM running the agent; outlives kernel restarts, not the kernel.

    With a `plan` (snapshots on) the guest either restores `plan.restore` or boots with its
    root in memory and, once warm, is saved under `plan.key` (see labkit/vm/snapshot.py);
    either way `come_up` ends with the agent's `resume`: fresh token, clock, random pool,
    hostname, and the host's root and the notebooks' directory mounted."""

    def __init__(self, memory_mib, cpus, rw_dir, ports, acceleration, log, plan=None):
        self.log = log
        self.token = secrets.token_hex(16)
        self.control_port = LocalPortCache.instance().find_available_port("127.0.0.1")
        self.ports = ports
        self.rw_dir = rw_dir
        self.acceleration = acceleration
        self.plan = plan
        self.restoring = plan is not None and plan.restore is not None
        self.how = "restored from a snapshot" if self.restoring else "booted"
        self.started = time.monotonic()
        self.booted_seconds = None
        self.console = collections.deque(maxlen=40)
        sweep_leftovers_of_dead_runs()
        self.workdir = new_run_dir()
        self.kernel = machine.ready_kernel()
        self.qmp = Qmp(self.workdir / "qmp")
        if self.restoring:
            self.agent_token = plan.restore.token
            self.initrd = plan.restore.initrd
            extra = ["-incoming", f"exec:cat {shlex.quote(str(plan.restore.state))}"]
        else:
            self.agent_token = secrets.token_hex(16)
            self.initrd = self.workdir / "initrd.cpio"
            self.initrd.write_bytes(guest_initramfs(self.kernel, self.agent_token, rw_dir, plan))
            extra = []
        argv = guest_argv(self.kernel, self.initrd, memory_mib, cpus, acceleration, rw_dir, self.qmp.path) + extra
        # Its own session, as jupyter_client gives a local kernel: a SIGTERM or Ctrl-C to
        # the server's process group must not kill the VM before the kernel shuts down.
        self.qemu = QemuProcess(argv, self._console_line, new_session=True)

    def _console_line(self, text, seconds):
        self.console.append(text)
        if self.booted_seconds is not None:
            self.log.info("labkit VM kernel (guest): %s", text)

    def describe(self) -> str:
        said = "\n".join("  " + line for line in self.console if line.strip()) or "  (nothing)"
        text = f"its console said:\n{said}"
        if self.qemu.exited and self.qemu.stderr.strip():
            text += "\nQEMU said:\n" + self.qemu.stderr.strip()[-2000:]
        return text

    async def request(self, op, timeout=10.0, **fields) -> dict:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.control_port), timeout)
        try:
            writer.write((json.dumps({"token": self.agent_token, "op": op, **fields}) + "\n").encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        if not line:
            # QEMU accepts a forwarded connection before the guest listens, then drops it.
            raise ConnectionError("the agent in the guest did not answer")
        answer = json.loads(line)
        if "error" in answer:
            raise HostError(f"the VM kernel's agent refused {op}: {answer['error']}")
        return answer

    async def come_up(self, deadline):
        try:
            await self.qmp.connect(self.qemu)
            if self.restoring:
                await self._wait_until_running(deadline)
            await self._forward("hostfwd_add")
        except (OSError, QmpError) as error:
            if self.qemu.wait(1.0):
                raise GuestStopped(f"QEMU exited as it started (status {self.qemu.exit_status}); "
                                   + self.describe()) from error
            raise
        await self.wait_for_agent(deadline)
        if self.plan is None:
            return self._up()
        if not self.restoring:
            # Warm: the kernel's modules imported and the base image built, in guest memory.
            try:
                await self.request("warm", timeout=max(1.0, deadline - time.monotonic()))
            except HostError as error:   # the kernel starts cold once the host's root is there
                self.log.warning("labkit VM kernel: not saving a guest that is not warm: %s", error)
            else:
                await self._save()
        await self.request("resume", timeout=max(10.0, deadline - time.monotonic()),
                           token_after=self.token, time=time.time(), seed=secrets.token_hex(32),
                           hostname=socket.gethostname(), root_cache=ROOT_CACHE,
                           modules_dir=str(self.kernel.modules_dir), rw_dir=str(self.rw_dir or ""))
        self.agent_token = self.token
        return self._up()

    def _up(self):
        self.booted_seconds = time.monotonic() - self.started

    def _forwards(self):
        return [(port, port) for port in self.ports] + [(self.control_port, CONTROL_PORT)]

    async def _forward(self, command, forwards=None, done=None):
        """hostfwd_add or hostfwd_remove each (host port, guest port); `done` collects those that took."""
        for host_port, guest_port in self._forwards() if forwards is None else forwards:
            rule = f"tcp:127.0.0.1:{host_port}" + (f"-:{guest_port}" if command == "hostfwd_add" else "")
            await self.qmp.human(f"{command} net0 {rule}", success="" if command == "hostfwd_add" else "removed")
            if done is not None:
                done.append((host_port, guest_port))

    async def _wait_until_running(self, deadline):
        # The guest was saved stopped, so it is restored paused ("inmigrate" while loading).
        while (status := (await self.qmp.execute("query-status"))["status"]) != "running":
            if status == "paused":
                await self.qmp.execute("cont")
                continue
            if time.monotonic() > deadline:
                raise HostError(f"the VM kernel's guest was not restored within {deadline - self.started:.0f} s "
                                f"(QEMU says {status!r})")
            await asyncio.sleep(0.05)

    async def _save(self):
        """Save the warm guest under the plan's key, then let it run on. A refusal is
        logged with QEMU's words and costs only the saving."""
        partial = snapshot.new_partial(self.initrd, self.agent_token, self.plan.files)
        started = time.monotonic()
        removed, stopped = [], False
        try:
            try:
                # No forward may be part of the saved state: a restore adds its own ports.
                await self._forward("hostfwd_remove", done=removed)
                await self.qmp.execute("stop")
                stopped = True
                await self.qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(partial.state))}")
                while (status := await self.qmp.execute("query-migrate")).get("status") not in (
                        "completed", "failed", "cancelled"):
                    await asyncio.sleep(0.1)
            finally:
                if stopped:
                    await self.qmp.execute("cont")
                await self._forward("hostfwd_add", removed)
            if status["status"] != "completed":
                raise QmpError(status.get("error-desc", status["status"]))
        except QmpError as error:
            snapshot.discard(partial)
            self.log.warning("labkit VM kernel: the guest could not be saved, so every start boots it: %s", error)
            return
        except BaseException:
            snapshot.discard(partial)
            raise
        saved = snapshot.commit(partial, self.plan.key)
        self.log.info("labkit VM kernel: guest saved in %.1f s (%d MiB) for the next kernel start",
                      time.monotonic() - started, saved.state.stat().st_size >> 20)

    async def wait_for_agent(self, deadline):
        while True:
            if self.qemu.exited:
                raise GuestStopped(f"the VM stopped while booting (QEMU exit status {self.qemu.exit_status}); "
                                   + self.describe())
            if time.monotonic() > deadline:
                raise HostError(f"the VM kernel's guest did not come up within {deadline - self.started:.0f} s "
                                f"under {self.acceleration.name}; raise LABKIT_VM_BOOT_TIMEOUT if the host is "
                                f"just slow. " + self.describe())
            try:
                await self.request("hello", timeout=2.0)
            except (OSError, ConnectionError, asyncio.TimeoutError, ValueError):
                await asyncio.sleep(0.2)
                continue
            return

    def stop(self):
        self.qmp.close()
        self.qemu.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True)
class SnapshotPlan:
    key: str
    files: list
    restore: snapshot.Snapshot | None


def guest_argv(kernel, initrd, memory_mib, cpus, acceleration, rw_dir, qmp) -> list[str]:
    """QEMU's command line for a kernel's guest: the same for a boot and for a restore
    (forwards are added on the monitor), as migration requires."""
    return qemu_command(host.qemu_binary(), kernel.vmlinux, initrd, memory_mib, cpus, acceleration, rw_dir) + [
        "-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]


def guest_command() -> tuple[list, dict]:
    """The agent's command line and environment in the guest (the token is added per boot)."""
    # The guest's kernel has no hostname of its own ("(none)"): it takes the host's, so
    # that what a notebook says of "the host" reads as it does outside the VM.
    return ([sys.executable, "-I", str(AGENT)],
            machine._guest_environment({"LABKIT_VM_HOSTNAME": socket.gethostname()}))


def guest_initramfs(kernel, token, rw_dir, plan, base=None) -> bytes:
    busybox = host.static_busybox()
    if busybox is None:
        raise HostError("no static busybox for the guest's initramfs; run `labkit vm setup`")
    command, environment = guest_command()
    environment["LABKIT_VM_AGENT_TOKEN"] = token
    base = base if base is not None else guest_base_initramfs(kernel, busybox, hot=plan is not None)
    run = initramfs.build_run(command, "/", environment, token, None if plan is not None else rw_dir)
    if plan is None:
        return base + run
    hot = CpioArchive()
    hot.directory("labkit")
    hot.file("labkit/hot_files", "".join(path.lstrip("/") + "\n" for path in plan.files).encode())
    return base + run + bytes(hot)


def guest_base_initramfs(kernel, busybox, hot) -> bytes:
    return initramfs.build_base(busybox, kernel.modules_dir, NETWORK_MODULES, init=guest.stage1_init(ROOT_CACHE, hot=hot))


def snapshot_plan(memory_mib, cpus, acceleration, rw_dir) -> SnapshotPlan | None:
    """What to restore (the newest snapshot, if its key still matches) or else what to save."""
    if not snapshot.enabled():
        return None
    kernel = machine.ready_kernel()
    busybox = host.static_busybox()
    if busybox is None:
        return None
    command, environment = guest_command()

    def key_of(files):
        return snapshot.key(files, initramfs=guest_base_initramfs(kernel, busybox, hot=True),
                            qemu_argv=guest_argv(kernel, "INITRD", memory_mib, cpus, acceleration,
                                                 "RW" if rw_dir else None, "QMP") + command,
                            memory_mib=memory_mib, cpus=cpus, accel=acceleration.name,
                            extra=json.dumps(environment, sort_keys=True))

    newest = snapshot.newest()
    if newest is not None and key_of(newest.files) == newest.directory.name:
        return SnapshotPlan(newest.directory.name, newest.files, newest)
    files = snapshot.hot_files(sys.executable, AGENT)
    return SnapshotPlan(key_of(files), files, None)


class GuestStopped(HostError):
    """QEMU exited before the agent answered."""


class LabkitVMProvisioner(LocalProvisioner):
    """Runs the kernel in a labkit VM; see the module's docstring."""

    memory = Unicode("1g", config=True, help="guest memory (LABKIT_VM_MEMORY wins)")
    cpus = Integer(2, config=True, help="guest CPUs (LABKIT_VM_CPUS wins)")
    boot_timeout = Float(300.0, config=True, help="seconds the guest may take to come up (LABKIT_VM_BOOT_TIMEOUT)")

    guest = None
    kernel_pid = None

    @property
    def has_process(self) -> bool:
        return self.kernel_pid is not None

    async def launch_kernel(self, cmd, **kwargs):
        env = dict(kwargs.get("env") or os.environ)
        cwd = str(Path(kwargs.get("cwd") or os.getcwd()).resolve())
        if self.guest is not None and self.guest.qemu.exited:
            self.log.warning("labkit VM kernel: the guest stopped (%s); booting a new one", self.guest.describe())
            self.guest.stop()
            self.guest = None
        if self.guest is None:
            hidden = hidden_in_the_guest(cmd[0] if cmd else sys.executable)
            if hidden:
                raise RuntimeError(hidden)
            self.guest = await self._boot(env, cwd)
        guest = self.guest
        env.update(LABKIT_HOME=machine.GUEST_LABKIT_HOME, LANG=env.get("LANG", "C.UTF-8"))
        for key, value in machine.GUEST_DEFAULTS.items():  # the kernel's own setting, if any, stays
            env.setdefault(key, value)
        # A host pid means nothing in the guest: ipykernel would watch the wrong parent.
        env.pop("JPY_PARENT_PID", None)
        env[BOOT_VARIABLE] = (f"{guest.how} in {guest.booted_seconds:.1f} s under {guest.acceleration.name} "
                              f"({guest.acceleration.reason})")
        connection = {key: (value.decode() if isinstance(value, bytes) else value)
                      for key, value in self.connection_info.items()}
        # The agent answers a warm start once it has imported the kernel's modules: under
        # emulation on a busy host that is most of a minute, time the kernel would
        # otherwise spend importing them itself.
        timeout = float(env.get("LABKIT_VM_BOOT_TIMEOUT", self.boot_timeout))
        try:
            answer = await guest.request("start", timeout=timeout, argv=cmd, env=env, cwd=cwd,
                                         connection=connection, connection_file=self.parent.connection_file)
        except BaseException:
            # jupyter_client cleans nothing up after a failed launch: without this the
            # guest would run on, unused, for as long as the server does.
            self._stop_guest()
            raise
        self.kernel_pid = answer["pid"]
        self.pid = self.kernel_pid
        self.log.info("labkit VM kernel: kernel %s in the guest (pid %s there)",
                      "forked from the warm agent" if answer.get("warm") else "started", self.kernel_pid)
        return self.connection_info

    async def _boot(self, env, cwd) -> Guest:
        memory = env.get("LABKIT_VM_MEMORY", self.memory)
        cpus = env.get("LABKIT_VM_CPUS", self.cpus)
        timeout = float(env.get("LABKIT_VM_BOOT_TIMEOUT", self.boot_timeout))
        settings = dict(memory_mib=machine._memory_mib(memory), cpus=machine._whole_cpus(cpus),
                        rw_dir=machine._shared_directory(cwd),
                        ports=[self.connection_info[name] for name in PORT_NAMES])
        acceleration = choose_acceleration()
        try:
            return await self._boot_with(acceleration, timeout, settings)
        except GuestStopped:
            if acceleration.name != "kvm" or os.environ.get(ACCEL_VARIABLE):
                raise
            fallback = Acceleration("tcg", "software emulation because KVM failed to boot the guest")
            return await self._boot_with(fallback, timeout, settings)

    async def _boot_with(self, acceleration, timeout, settings) -> Guest:
        plan = None
        started = time.monotonic()
        try:
            plan = await asyncio.to_thread(snapshot_plan, settings["memory_mib"], settings["cpus"], acceleration,
                                           settings["rw_dir"])
        except HostError as error:
            self.log.warning("labkit VM kernel: no snapshot this time: %s", error)
        if plan is not None:
            self.log.info("labkit VM kernel: %s (checked in %.1f s)", "a saved guest matches" if plan.restore
                          else "no saved guest matches labkit, its venv and this guest's settings",
                          time.monotonic() - started)
        if plan is not None and plan.restore is not None:
            try:
                return await self._come_up(acceleration, timeout, settings, plan)
            except (HostError, OSError, QmpError, asyncio.TimeoutError) as error:
                # A snapshot this QEMU cannot load is never tried again.
                self.log.warning("labkit VM kernel: restoring the saved guest failed, booting instead: %s", error)
                snapshot.discard(plan.restore)
                plan = SnapshotPlan(plan.key, plan.files, None)
        return await self._come_up(acceleration, timeout, settings, plan)

    async def _come_up(self, acceleration, timeout, settings, plan) -> Guest:
        restoring = plan is not None and plan.restore is not None
        self.log.info("labkit VM kernel: %s a guest (%s MiB, %s CPUs) under %s: %s; %s",
                      "restoring" if restoring else "booting", settings["memory_mib"], settings["cpus"],
                      acceleration.name, acceleration.reason,
                      "a few seconds" if restoring else "this takes ~10 s under emulation, ~2 s under KVM")
        guest = Guest(acceleration=acceleration, log=self.log, plan=plan, **settings)
        deadline = guest.started + (min(timeout, machine.KVM_BOOT_TIMEOUT) if acceleration.name == "kvm" else timeout)
        try:
            await guest.come_up(deadline)
        except BaseException as error:
            guest.stop()
            if acceleration.name == "kvm" and not isinstance(error, GuestStopped) and isinstance(error, HostError):
                raise GuestStopped(str(error)) from error
            raise
        self.log.info("labkit VM kernel: guest %s in %.1f s; starting the kernel in it", guest.how,
                      guest.booted_seconds)
        return guest

    async def poll(self):
        if self.kernel_pid is None:
            return 0
        if self.guest is None or self.guest.qemu.exited:
            return 1 if self.guest is None else (self.guest.qemu.exit_status or 1)
        try:
            return (await self.guest.request("poll"))["exit"]
        except (OSError, ConnectionError, asyncio.TimeoutError, ValueError):
            return None  # a busy emulated guest can be slow to answer; the restarter asks again

    async def wait(self):
        status = 0
        if self.kernel_pid is not None:
            while (status := await self.poll()) is None:
                await asyncio.sleep(0.1)
            self.kernel_pid = None
        return status

    async def send_signal(self, signum):
        if self.kernel_pid is None or self.guest is None:
            return
        try:
            await self.guest.request("signal", signum=int(signum))
        except (OSError, ConnectionError, asyncio.TimeoutError, ValueError):
            if self.guest.qemu.wait(1.0):
                return  # the guest is gone, and its kernel with it: nothing left to signal
            raise

    async def kill(self, restart=False):
        try:
            await self.send_signal(9)
        except (OSError, ConnectionError, asyncio.TimeoutError, ValueError, HostError):
            if not restart:
                self._stop_guest()

    async def terminate(self, restart=False):
        await self.send_signal(15)

    def get_shutdown_wait_time(self, recommended=5.0):
        # A kernel in an emulated guest takes longer to stop.
        return max(recommended, 15.0)

    def get_stable_start_time(self, recommended=10.0):
        return max(recommended, 30.0)

    async def cleanup(self, restart=False):
        if not restart:
            self._stop_guest()
        await super().cleanup(restart=restart)

    def _stop_guest(self):
        if self.guest is not None:
            self.guest.stop()
            self.guest = None
            self.kernel_pid = None


def hidden_in_the_guest(python) -> str | None:
    """Why the guest could not run this interpreter, or None. The guest sees the host's root
    read-only but mounts a /tmp of its own, so an installation below /tmp (a checkout cloned
    into mktemp, say) is not there."""
    place = Path(os.path.abspath(python))
    if place == Path("/tmp") or Path("/tmp") in place.parents:
        return (f"the VM kernel cannot run {place}: the guest mounts its own /tmp, so a Python "
                "installed below /tmp is not visible there; install labkit (its venv) outside /tmp")
    return None
