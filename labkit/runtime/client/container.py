"""Container: a spec turned into a running process and, always, back into nothing.

Runs in the caller (the Jupyter kernel or the `labkit` command): it compiles the spec
into a plan and asks the helper (runtime/client/helper_client.py) for everything else.

Lifecycle (the OCI vocabulary): configured → created → running → exited → removed.
`run()` goes through all of it; long-lived containers use `start(detach=True)`,
`exec()`, `stop()`, `remove()`.
"""

import os
import signal
import sys
import time
from pathlib import Path

from labkit.errors import ConfigError, ContainerError, HostError, ImageError, ImageNotFound
from labkit.home import open_for_user_namespace
from labkit.images import Image, get_image
from labkit.images.overlay import MAX_IMAGE_LAYERS
from labkit.linux import processes
from labkit.linux.rootless import running_rootless
from labkit.runtime import plan as launch
from labkit.runtime.container_dir import ContainerDir
from labkit.runtime.client.helper_client import caught_up, get_helper
from labkit.runtime.client.network import attach_network, detach_network, prepare_network
from labkit.runtime.client.registry import forget, remember
from labkit.runtime.client.result import Result, describe_setup_error
from labkit.runtime.client.state import all_states, owner_alive
from labkit.runtime.client.streams import open_stdio
from labkit.runtime.lifecycle import CREATED, EXITED, REMOVED, RUNNING, Lifecycle
from labkit.runtime.protocol import Op
from labkit.runtime.spec import ContainerSpec, parse_env, parse_timeout, parse_user, parse_workdir

STOP_GRACE = 10.0


class Container:
    def __init__(self, spec: ContainerSpec | None = None, **fields):
        self.spec = (spec or ContainerSpec(**fields)).validated()
        self.id = os.urandom(8).hex()  # secrets.token_hex, less its import (hmac, base64) in every labkit run
        self.name = self.spec.name or f"labkit-{self.id[:8]}"
        self.hostname = self.spec.hostname or self.name
        self.image = self.spec.image if isinstance(self.spec.image, Image) else get_image(self.spec.image)
        if len(self.image.layers) > MAX_IMAGE_LAYERS:
            raise ImageError(f"image {self.image.name!r} has {len(self.image.layers)} layers, and overlayfs stacks "
                             f"at most {MAX_IMAGE_LAYERS + 1} lower layers (the image's and the init layer); "
                             "squash it (export it as a rootfs and import that)")
        self.files = ContainerDir.of(self.id)   # its directory on disk: paths, state.json
        self.dir = self.files.path
        self.lifecycle = Lifecycle(self.name)   # configured → created → running → exited → removed
        self.pid = None            # host PID of the container's first process
        self.result = None
        self.network = None        # the ContainerNetwork labkit.net gave it (bridge or container:NAME)
        self.cgroup_name = None    # as the helper made it: "labkit/<id>", or a pool slot's name
        self.pooled = None         # did a slot made ahead serve it (runtime/helper/ready_slots.py)?
        self._helper = None
        self._streams = None
        self._started_at = None
        self._deadline = None
        self._held = False
        self._removed_by_helper = False   # run() without detach: the helper removes the directory at exit

    @property
    def state(self) -> str:
        """configured, created, running, exited or removed (runtime/lifecycle.py)."""
        return self.lifecycle.state

    def __repr__(self):
        return f"<Container {self.name} {self.state} image={self.image.name} pid={self.pid}>"

    # --- paths students and other modules look at --------------------------------

    @property
    def upper_dir(self) -> Path:
        """The read-write layer: every change the container made (what commit keeps)."""
        return self.files.upper

    @property
    def init_dir(self) -> Path:
        return self.files.init

    @property
    def cgroup(self):
        from labkit.cgroups import container_hierarchy

        return container_hierarchy().open(self.cgroup_name or f"{container_hierarchy().parent}/{self.id}")

    @property
    def netns(self) -> str | None:
        return None if self.pid is None else f"/proc/{self.pid}/ns/net"

    @property
    def ip(self):
        return None if self.network is None else self.network.ip

    # --- lifecycle -----------------------------------------------------------------

    def run(self, on_output=None, remove=True, stdout=None, stderr=None, stdin=None) -> Result:
        """Start, stream output to `on_output(stream, text)`, wait, clean up. Returns a Result
        (it does not raise on a failing command: call `.check()` for that)."""
        try:
            self.start(on_output=on_output, stdout=stdout, stderr=stderr, stdin=stdin, auto_remove=remove)
            return self.wait()
        finally:
            if remove and self.state != "removed":
                self.remove()

    def start(self, on_output=None, stdout=None, stderr=None, stdin=None, detach=False, auto_remove=False,
              tty=False):
        """Make the container and start its command. `detach=True`: output goes to log
        files (see `logs()`), and the container lives until stopped or its owner exits.
        `tty`: `stdin` is a pty's slave, which the command takes as its terminal."""
        if self.state != "configured":
            raise ContainerError(f"container {self.name} was already started ({self.state})")
        self._check_name_free()
        hold = self.spec.network.managed
        # Until the helper has written state.json (which names our layers as in use), a
        # prune could remove them: hold the store's shared lock over the start.
        with self.image.store.lock():
            self._check_layers_present()
            plan = self._plan(hold=hold, auto_remove=auto_remove and not detach)
            if tty:
                plan.process = self._process_plan(tty=True)
            if detach:  # the helper writes its output into rotated files
                plan.logs = launch.LogPlan(self.spec.log_max_size, self.spec.log_max_files)
            self._removed_by_helper = plan.auto_remove
            try:
                self._launch(plan, on_output, stdout, stderr, stdin, detach)
            except BaseException:
                self._abandon_start()
                raise
        if detach:
            remember(self)
        return self

    def _launch(self, plan, on_output, stdout, stderr, stdin, detach):
        self._helper = get_helper()
        fds, names, self._streams = open_stdio(on_output, stdout, stderr, stdin, detach)
        self._started_at = time.monotonic()
        if self.spec.timeout:
            self._deadline = self._started_at + self.spec.timeout
        # "created" before the request goes: an interrupt from here on must kill and collect.
        self.lifecycle.to(CREATED)
        try:
            self._helper.send(Op.START, fds, id=self.id, plan=launch.to_wire(plan), fd_names=names)
        finally:
            self._streams.close_handed_over()   # the caller's own fds stay open
        answer = self._helper.wait_for(self.id, (Op.HELD, Op.STARTED, Op.EXITED))
        if answer["op"] == Op.FAILED:
            self.lifecycle.to(REMOVED)
            self._close_streams()
            raise HostError(f"could not create container {self.name}: {answer['error']}")
        if answer["op"] == Op.HELD:
            self._held = True
            self.pid = answer["pid"]
            self.cgroup_name = answer["cgroup"]
            attach_network(self)
            self._helper.send(Op.RELEASE, id=self.id)
            answer = self._helper.wait_for(self.id, (Op.STARTED, Op.EXITED))
        if answer["op"] == Op.STARTED:
            self.pid = answer["pid"]
            self.cgroup_name, self.pooled = answer["cgroup"], answer["slot"]
            self.startup = time.monotonic() - self._started_at
            self.lifecycle.to(RUNNING)
        else:  # setup failed: the exit message is already here
            self._helper.put_back(answer)
            self.lifecycle.to(RUNNING)

    def _abandon_start(self):
        """Start failed or was interrupted (the stop button) after the helper got the
        request: kill the container, held or already running, and give back what
        labkit.net took for it."""
        if self.state == "created" and self.result is None:
            self._finish(self._kill_and_collect())
        elif self.result is None:
            self._close_streams()   # interrupted before "created": no request left, pipes made
        detach_network(self)

    def wait(self, timeout=None) -> Result:
        """Stream output until the container exits. After the spec's timeout (or
        `timeout` seconds, if sooner) the container is killed and the Result says
        "timed out"; on KeyboardInterrupt it is killed, cleaned up, and the interrupt re-raised."""
        if self.result is not None:
            return self.result
        if self.state not in ("running", "created"):
            raise ContainerError(f"container {self.name} is not running ({self.state})")
        deadline = self._deadline
        if timeout is not None:
            deadline = min(deadline or float("inf"), time.monotonic() + timeout)
        try:
            exited = self._pump_until_exit(deadline)
        except KeyboardInterrupt:
            self._finish(self._kill_and_collect(), interrupted=True)
            raise
        if exited is None:
            return self._finish(self._kill_and_collect(), timed_out=True)
        return self._finish(exited)

    def _pump_until_exit(self, deadline):
        streams = self._streams
        while streams.open:
            wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
            streams.pump(wait)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            message = self._helper.take(self.id, (Op.EXITED,))
            if message is not None:
                streams.drain()
                return message
        while True:
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return None
            message = self._helper.wait_for(self.id, (Op.EXITED,), timeout=min(wait, 0.5))
            if message is not None:
                return message

    def _kill_and_collect(self):
        self._helper.send(Op.KILL, id=self.id)
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            try:
                message = self._helper.wait_for(self.id, (Op.EXITED,), timeout=0.5)
            except KeyboardInterrupt:
                continue  # a second press of stop: we are already stopping
        if self._streams:
            self._streams.drain()
        if message is not None and message["op"] == Op.FAILED:
            # The start never reached the helper (interrupted before the request left) or
            # failed there: no container ran, nothing exited. Its Result says killed.
            return None
        return message

    def _finish(self, exited, timed_out=False, interrupted=False) -> Result:
        if self.result is not None:
            return self.result
        stats = (exited or {}).get("stats") or {}
        error = (exited or {}).get("error")
        status = (exited or {}).get("status", signal.SIGKILL)
        streams = self._streams
        self.result = Result.from_status(
            status, name=self.name, command=self.command,
            stdout=streams.text("stdout") if streams else "", stderr=streams.text("stderr") if streams else "",
            duration=time.monotonic() - self._started_at, startup=getattr(self, "startup", None),
            memory_peak=stats.get("memory_peak"), memory_limit=self.spec.memory,
            cpu_seconds=stats.get("cpu_seconds"), oom_killed=bool(stats.get("oom_kills")),
            timed_out=timed_out, interrupted=interrupted, stats=stats,
            error=describe_setup_error(error) if error else None,
        )
        if error and error.get("exit_code"):
            self.result.exit_code = error["exit_code"]
            self.result.signal = None
        self._close_streams()
        detach_network(self)
        self.lifecycle.to(EXITED)
        return self.result

    def stop(self, grace: float = STOP_GRACE) -> Result:
        """SIGTERM (or the image's STOPSIGNAL) to PID 1, then SIGKILL after `grace` seconds (PID 1 ignores signals it
        has no handler for, so many commands only go with the SIGKILL)."""
        if self.state == "running" and self.result is None:
            self._helper.send(Op.SIGNAL, id=self.id, signal=self.image.config.stop_signal_number())
            try:
                exited = self._pump_until_exit(time.monotonic() + grace)
            except KeyboardInterrupt:
                self._finish(self._kill_and_collect(), interrupted=True)
                raise
            self._finish(exited if exited is not None else self._kill_and_collect())
        return self.result

    def poll(self) -> str:
        """The state now, without waiting: a detached container's process can end while
        nobody waits for it; the helper's exit message, if it has come, finishes it."""
        if self.state == RUNNING and self.result is None:
            exited = self._helper.take(self.id, (Op.EXITED,))
            if exited is not None:
                self._finish(exited)
        return self.state

    def signal(self, number: int) -> None:
        """Send signal `number` to the container's PID 1 (`docker kill -s`). The kernel
        gives PID 1 only the signals it has a handler for (SIGKILL aside): a shell without
        a trap ignores SIGTERM there, as under Docker."""
        if self.state == "running" and self.result is None:
            self._helper.send(Op.SIGNAL, id=self.id, signal=int(number))

    def kill(self) -> Result:
        if self.state == "running" and self.result is None:
            self._finish(self._kill_and_collect())
        return self.result

    def remove(self) -> None:
        """Stop if needed, then remove its read-write layer, init layer and state."""
        if self.state == "removed":
            return
        if self.state == "running" and self.result is None:
            self.kill()
        # An auto-removed container's directory goes with its exit, in the helper (which may
        # still be at it: asking again would only cost a round trip).
        if self.state != "configured" and not self._removed_by_helper and self.dir.exists():
            self._helper.send(Op.REMOVE, id=self.id, dir=str(self.dir))
            self._helper.wait_for(self.id, (Op.REMOVED,), timeout=30)
        forget(self.name)
        self.lifecycle.to(REMOVED)

    # --- while it runs ---------------------------------------------------------------

    def exec(self, command, on_output=None, env=(), workdir=None, user=None, timeout=None, stdio=None,
             tty=False) -> Result:
        """Run another process inside this running container (its namespaces and cgroup).
        `stdio`: {"stdin"/"stdout"/"stderr": fd} to hand it as they are (then the Result
        holds no output); `tty`: its stdin is a pty's slave, its terminal."""
        if self.state != "running" or self.result is not None:
            raise ContainerError(f"container {self.name} is not running; start it before exec")
        if isinstance(command, str):
            command = ["sh", "-c", command]
        # The same checks as the spec's own --env, --workdir, --user and --timeout.
        env = [item for item in map(parse_env, env) if item is not None]   # a bare KEY: the caller's value, if any
        workdir, timeout = parse_workdir(workdir), parse_timeout(timeout)
        user = parse_user(user, self.spec.namespaces, self.spec.user_map)
        from labkit.runtime.client.exec_process import ExecProcess   # not loaded by a run without exec

        process = ExecProcess(self, [str(part) for part in command], env, workdir, user, timeout, tty)
        return process.run(on_output, stdio)

    def stats(self):
        """Live cgroup statistics (memory, CPU, pids) while it runs."""
        return self.cgroup.stats()

    def pids(self) -> list:
        """Host PIDs of every process in the container: its cgroup's, or rootless, where it
        has no cgroup of its own, its PID namespace's."""
        cgroup = self.cgroup
        if cgroup.exists():
            return cgroup.pids()
        if not (self.state == RUNNING and self.result is None and self.pid):
            return []
        if "pid" in self.spec.namespaces:
            return processes.in_pid_namespace_of(self.pid)
        return processes.descendants(self.pid)   # the host's PID namespace holds every process

    def top(self) -> list:
        """[(host pid, command line)] of every process in the container."""
        rows = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    rows.append((pid, handle.read().replace(b"\0", b" ").decode(errors="replace").strip()))
            except (FileNotFoundError, ProcessLookupError):
                pass
        return rows

    def logs(self, last: int | None = None) -> str:
        """What a detached container wrote to stdout, then stderr (what rotation kept);
        `last`: only the last that many bytes of it (the files are not read whole)."""
        files = self.log_files()
        if not files and self.result is not None:
            text = self.result.stdout + self.result.stderr
            return text if last is None else text[-last:] if last else ""
        return b"".join(_tail(files, last)).decode(errors="replace")

    def log_files(self) -> list:
        """The files `logs()` reads, in its order (stdout's oldest first, then stderr's)."""
        return [path for name in ("stdout", "stderr") for path in self.files.logs(name)]

    def log_size(self) -> int:
        """Bytes in the log files now (what `logs()` would return whole)."""
        return sum(_size(path) for path in self.log_files())

    def commit(self, image_name: str, message: str = ""):
        """Turn the read-write layer into a new image (see labkit.images.commit)."""
        from labkit.images.commit import commit

        return commit(self.upper_dir, self.image, image_name, message=message or f"commit of {self.name}",
                      container={"id": self.id, "name": self.name})

    @property
    def command(self) -> list:
        return self.image.config.command(self.spec.command, self.spec.entrypoint)

    # --- how the plan is made ----------------------------------------------------------

    def _check_layers_present(self):
        missing = [d.name[:12] for d in self.image.layer_dirs if not d.is_dir()]
        if missing:
            raise ImageNotFound(f"image {self.image.name!r} lost layer(s) {', '.join(missing)} "
                                "(pruned or removed meanwhile); build or import it again")

    def _check_name_free(self):
        if self.spec.name is None:
            return  # a generated name carries the random id: no other container has it
        taken = [state for state in all_states() if state.get("name") == self.name and owner_alive(state)]
        if taken:
            # One of ours that exited a moment ago: the helper forgets it right after
            # telling its exit (helper_client.caught_up). Only then is the name asked again.
            caught_up()
            taken = [state for state in all_states() if state.get("name") == self.name and owner_alive(state)]
        if taken:
            raise ConfigError(f"a container named {self.name!r} already exists; remove it or pick another name")

    def _plan(self, hold, auto_remove) -> launch.StartPlan:
        """Compile the spec, with the image and the network's answer, into the launch plan.
        Every host-side check happens here, before the helper is asked for anything."""
        from labkit.cgroups import container_hierarchy

        if not self.command:
            raise ConfigError(f"nothing to run: no command given, and image {self.image.name!r} has no "
                              "ENTRYPOINT or CMD (or --entrypoint dropped them); give a command after --")
        plan = launch.start_plan(self.spec, self.image, id=self.id, name=self.name, hostname=self.hostname,
                                 directory=self.dir, command=self.command, hold=hold, auto_remove=auto_remove)
        hierarchy = container_hierarchy()
        if hierarchy.delegation is not None:
            plan.limits = rootless_limits(hierarchy, self.spec, plan.limits)
        hierarchy.check(plan.limits)
        if plan.user_map is not None and not running_rootless():
            # (rootless, the helper does it: only root of the user's namespace may give
            # the directories to a group of the user's range)
            for home in {self.dir.parent.parent, self.image.store.home}:
                open_for_user_namespace(Path(home), plan.user_map.uid, plan.user_map.uid)
        # Last: from here on an address and ports are taken, and given back by detach_network.
        network = prepare_network(self, plan.init_files["hosts"])
        if network is not None:
            plan.init_files["hosts"] = network.hosts
            plan.join = network.join
            plan.network_inside = launch.NetworkInside(**network.inside) if network.inside else None
        return plan

    def _process_plan(self, command=None, env=(), workdir=None, user=None, tty=False) -> launch.ProcessPlan:
        return launch.process_plan(self.spec, self.image, self.hostname, command or self.command,
                                   env=env, workdir=workdir, user=user, tty=tty)

    def _close_streams(self):
        if self._streams:
            self._streams.close()


def rootless_limits(hierarchy, spec, limits):
    """What an ordinary user's cgroups can hold of `limits`; one line on stderr for each
    limit asked for that will not (no delegation, or a controller not delegated)."""
    from labkit.cgroups.delegation import enforceable, limits_off_lines

    for line in limits_off_lines(spec.asked_limits(), hierarchy.controllers, hierarchy.delegation.why_not):
        # flushed now, before the container's own output: in a kernel, stderr and stdout reach
        # the notebook in the order they were flushed, and the line is about what follows
        print(line, file=sys.stderr, flush=True)
    return enforceable(limits, hierarchy.controllers)


def _tail(files, last):
    """The last `last` bytes (all if None) of the files taken as one, as chunks in order."""
    chunks = []
    for path in reversed(files):
        if last is not None and last <= 0:
            break
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if last is not None and size > last:
                    handle.seek(size - last)
                data = handle.read() if last is None else handle.read(last)
        except FileNotFoundError:
            continue  # rotated away meanwhile
        chunks.append(data)
        if last is not None:
            last -= len(data)
    return list(reversed(chunks))


def _size(path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
