"""The helper: a small, single-threaded process that forks once per container.

Runs in the helper process itself (`python -m labkit.runtime.helper`, or a fork of the
`labkit` command: runtime/client/helper_client.py starts it either way). Why it exists:
a Jupyter kernel is large and multi-threaded, and forking it is slow (14 ms at 220 MB)
and unsafe. The helper is started once per owner, imports only what container setup
needs, and serves requests over a Unix socket: `start` (fork a container's supervisor,
runtime/supervisor/, or as root its PID 1 itself: runtime/helper/first_process.py),
`release`, `signal`, `kill`, `exec`, `remove`. It reports `started` / `held` / `exited`
back. When its owner goes away (the socket reaches EOF, or
SIGTERM), it kills every container it started and removes what they left, so nothing
outlives the owner.

In its idle time it keeps three slots ready, five in a burst (runtime/helper/ready_slots.py): a cgroup,
namespaces and a first process made ahead, which a `start` then only hands its plan to.
A helper for one container (`labkit run`, a detached container's monitor) keeps none, and
removes what its container left itself: no next request waits behind that removal, and
the owner waits for it before it exits, so neither a slot nor the janitor's process
would be used before it is torn down again.

The messages are declared in `labkit.runtime.protocol`, the plans they carry in
`labkit.runtime.plan`.
"""

import dataclasses
import gc
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

from labkit.cgroups import container_hierarchy
from labkit.cgroups.slot_cgroups import write_limits
from labkit.home import check_before_user_namespace, give_to_user_namespace, labkit_home
from labkit.linux import syscalls
from labkit.linux.rootless import enter_user_namespace, running_rootless
from labkit.runtime import lifecycle, protocol
from labkit.runtime.container_dir import ContainerDir
from labkit.runtime.helper import first_process, ready_slots
from labkit.runtime.helper.janitor import Janitor
from labkit.runtime.helper.logs import LogPipes
from labkit.runtime.plan import CgroupPlacement, ExecPlan, StartPlan, from_wire
from labkit.runtime.protocol import FD_NAMES, MAX_MESSAGE, Op
from labkit.runtime.supervisor.supervise import supervise


POOL_QUIET_SECONDS = 0.1   # no slot is made in idle time until the helper was quiet this long
# After a start is answered, when starts come in a row, the slot it took is remade this
# much later, or at once when its exit was told: a short command's exit (`true` is told
# ~1.5 ms after its start) is not kept waiting behind that fork.
REFILL_GRACE_SECONDS = 0.002


class Process:
    """One supervised process: a container's first process, or an `exec` inside one."""

    def __init__(self, ident, kind, supervisor_pid, error_r, report_r, go_w):
        self.id = ident
        self.kind = kind                    # Op.START or Op.EXEC
        self.supervisor_pid = supervisor_pid
        self.error_r = error_r
        self.report_r = report_r
        self.go_w = go_w
        self.init_pid = None
        self.status = None
        self.error = None
        self.error_bytes = b""
        self.report_buffer = b""
        self.exec_done = False
        self.started_sent = False
        self.exit_reported = False   # EXITED sent (on the supervisor's "exit" line); reaped at EOF
        self.container = None        # a start's {"plan", "cgroup", ...}, kept from its exit to its teardown
        self.started_at = time.monotonic()
        # A first process the helper forked itself (no supervisor: runtime/helper/
        # first_process.py): its pidfd says when it exits; its mount namespace is held
        # here from when it is made (ahead, in a slot with a root; else once this socket says "m").
        self.pidfd = None
        self.mount_namespace = None
        self.namespace_socket = None


class Zygote:
    def __init__(self, sock, one_container=False):
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.processes = {}       # id -> Process
        self.containers = {}      # container id -> {"plan": StartPlan, "cgroup": ..., "init_pid": ...}
        self.stopped = {}         # container id -> StartPlan, for exited containers not yet removed
        self.running = True
        self.pool = ready_slots.Pool(0 if one_container else ready_slots.size_from_environment(), self.selector)
        self.logs = LogPipes(self.selector)   # detached containers' stdout/stderr, into rotated files
        # Removes exited containers' directories, in a process of its own (here: one container)
        self.janitor = Janitor(self.selector, inline=one_container)
        self.pool.janitor = self.janitor
        self.refill_at = None          # starts come in a row: remake the slot the last one took then (monotonic)
        self.teardowns = []            # what exited containers left (cgroups, directories): done when idle
        # Containers' PID 1 forked here, no supervisor (runtime/helper/first_process.py); None: not allowed
        self.own_pid_namespace = first_process.own_pid_namespace()
        self.starts = 0                # containers asked for: slots are made once there was one
        self.last_activity = self.last_start = time.monotonic()

    # --- messages ----------------------------------------------------------------

    def send(self, op, **fields):
        try:
            self.sock.send(protocol.encode(op, **fields))
        except (BrokenPipeError, ConnectionResetError):
            self.running = False

    def serve(self):
        """Requests and the processes' reports first; then, with nothing to answer, one
        slot remade after a start was answered (when starts come back to back: 2 ms after
        it, or once its exit is told, whichever comes first; not once the next request is
        on its way), then the teardown of exited containers, then slots in idle time."""
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, self.on_request)
        while self.running:
            wait = 0 if self.teardowns else self.until_pool_may_grow()
            if self.refill_at is not None:
                wait = max(0.0, min(1.0 if wait is None else wait, self.refill_at - time.monotonic()))
            events = self.selector.select(timeout=1.0 if wait is None else wait)
            for key, _ in events:
                key.data(key.fileobj)
            if events:
                self.last_activity = time.monotonic()
                continue
            if not self.running:
                break
            if self.refill_at is not None and time.monotonic() >= self.refill_at:
                self.refill_at = None
                if self.pool.wants_more():   # also while the next start is being set up: kept
                    self.pool.fill_one()     # for later, the refill was lost and the pool ran dry
            elif self.teardowns:
                self.teardowns.pop(0)()
            elif self.pool.extra and time.monotonic() - self.last_start > ready_slots.SHRINK_AFTER_SECONDS:
                self.pool.shrink()
            elif wait is not None and self.refill_at is None:   # quiet for the whole wait
                self.pool.fill_one()
        self.shutdown()

    def until_pool_may_grow(self):
        """Seconds until a slot may be made in idle time (0: now; None: no slot is wanted,
        or not while a container is being started). Slots are made once this helper was
        asked for a container (a one-shot `labkit run` makes none), after it was quiet for
        a moment (a fork competes with a running container for the CPU, and would delay
        the report of a short command's exit). When containers come one after the other,
        `serve` also makes one right after each exit was reported, once no request waits."""
        if not self.pool.wants_more() or not self.starts:
            return None
        if any(p.kind == Op.START and not p.started_sent for p in self.processes.values()):
            return None   # its STARTED (or its failure) wakes the loop
        youngest = max((p.started_at for p in self.processes.values()), default=self.last_activity)
        return max(0.0, max(youngest, self.last_activity) + POOL_QUIET_SECONDS - time.monotonic())

    def on_request(self, sock):
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 8)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self.running = False  # the owner is gone
            return
        for fd in fds:
            os.set_inheritable(fd, False)
        request = {}
        try:
            request = protocol.decode(data)
            handler = getattr(self, "op_" + request["op"].value, None)
            if handler is None:
                raise protocol.ProtocolError(f"{request['op'].value} is not a request")
            handler(request, fds)
        except Exception as error:  # noqa: BLE001 — report, keep serving
            for fd in fds:
                _close(fd)
            self.send(Op.FAILED, id=request.get("id"), error=f"{type(error).__name__}: {error}",
                      errno=getattr(error, "errno", None))

    # --- container lifecycle -------------------------------------------------------

    def op_start(self, request, fds):
        """A ready slot takes the plan if it fits; otherwise the container is made here."""
        plan = from_wire(StartPlan, request["plan"])
        stdio = dict(zip(FD_NAMES, _fds_or_none(fds, request["fd_names"])))
        self.starts += 1
        self.last_start = time.monotonic()
        try:
            self.compile_seccomp(plan.process.security)
            if running_rootless():
                from labkit.images.rootless_overlay import rootless_overlay   # as root, no helper needs it

                # Decided at this helper's first start (a probe mount), then kept.
                plan.overlay = rootless_overlay(labkit_home()).kind
                if plan.overlay == "fuse":
                    self.pool.size = 0   # a slot serves kernel-overlay plans only (ready_slots.fits)
            slot = self.pool.take(plan)
            if slot is None:
                self.start_fresh(request["id"], plan, stdio)
            else:
                self.start_in_slot(request["id"], plan, stdio, slot, request["plan"])
            self.pool.learn(plan)
        finally:
            for fd in stdio.values():
                _close(fd)

    def start_fresh(self, ident, plan, stdio):
        """Create the container's directories and cgroup, then fork its supervisor."""
        cgroup = None
        try:
            self.make_directory(plan, f"{container_hierarchy().parent}/{plan.id}", stdio)
            cgroup = container_hierarchy().create(plan.id, plan.limits)
            self.place(plan, cgroup, slot=False)
            if self.own_pid_namespace is not None and first_process.alone_can_start(plan):
                self.fork_alone(ident, plan, stdio)
            else:
                self.fork_supervisor(ident, Op.START, plan, stdio, supervise, hold=plan.hold)
        except BaseException:
            if cgroup is not None:
                cgroup.delete()
            self.containers.pop(plan.id, None)
            ContainerDir(plan.dir).remove()
            raise

    def start_in_slot(self, ident, plan, stdio, slot, wire):
        """Write the plan's limits into the slot's cgroup, make the directories, hand the
        slot's first process its plan. That process is the container's from here on:
        killed before the plan reached it (state.json names its cgroup already), its
        supervisor reports how it ended, as for a container killed during its setup."""
        go_r, go_w = os.pipe2(os.O_CLOEXEC) if plan.hold else (None, None)
        # A first process forked alone reports on a pipe made for this start; a supervised
        # slot's supervisor on the slot's own (closed with the slot if it is discarded).
        own_report = slot.pid is not None
        report_r, report_w = os.pipe2(os.O_CLOEXEC) if own_report else (slot.report_r, None)
        cgroup = container_hierarchy().open(slot.cgroup_name)
        try:
            if slot.use_root:   # built ahead, with the root: becomes the container's
                ContainerDir(plan.dir).take_over(slot.directory, plan.init_files)
                slot.directory = None
            self.make_directory(plan, slot.cgroup_name, stdio, made=slot.use_root)
            write_limits(cgroup, plan.limits)
            self.place(plan, cgroup, slot=True)
        except BaseException:
            self.containers.pop(plan.id, None)
            self.pool.discard(slot)   # its root's namespace let go before the directory it may have become goes
            self.janitor.remove(ContainerDir(plan.dir))
            for fd in (go_r, go_w, report_w, report_r if own_report else None):
                _close(fd)
            raise
        try:
            # The report pipe of a first process forked alone: its "ready" (held) comes here.
            self.pool.hand_over(slot, plan, wire, {**stdio, "go": go_r, "report": report_w})
        except OSError:
            pass   # it was killed since `take`: its exit is on the way
        finally:
            _close(go_r)
            _close(report_w)
        # A root built for another image: its first process leaves it behind; its directory
        # goes with the container (before, that process may still be unmounting it).
        self.containers[plan.id]["unused_slot_dir"] = slot.directory
        process = Process(ident, Op.START, slot.supervisor_pid, slot.error_r, report_r, go_w)
        if slot.pid is not None:
            process.init_pid = self.containers[plan.id]["init_pid"] = slot.pid
            process.pidfd = slot.pidfd
            if slot.use_root:
                process.mount_namespace = slot.mount_namespace   # held since "ready"
            else:
                if slot.mount_namespace is not None:
                    self.janitor.let_go(slot.mount_namespace)   # another root than this plan's: left behind
                process.namespace_socket = slot.plan_socket   # its "m" comes once the plan's namespace is made
        if process.namespace_socket is None:
            slot.plan_socket.close()
        self.watch(process)

    def make_directory(self, plan, cgroup_name, stdio, made=False):
        """The container's directory (`made`: a slot's, already), its state.json and
        (detached) its log files, whose pipes' write ends go into `stdio` for the container."""
        if plan.user_map is not None and running_rootless():
            for home in {Path(plan.dir).parent.parent, labkit_home()}:
                give_to_user_namespace(home, plan.user_map.uid, plan.user_map.uid)
        if not made:
            ContainerDir(plan.dir).make(plan.init_files, plan.user_map.uid if plan.user_map else None,
                                        plan.storage_size)
        if plan.logs is not None:
            paths = {name: ContainerDir(plan.dir).log(name) for name in ("stdout", "stderr")}
            stdio.update(self.logs.make(plan.id, paths, plan.logs.max_size, plan.logs.max_files))
        self.write_state(plan, lifecycle.CREATED, cgroup_name)

    def write_state(self, plan, status, cgroup_name, **more):
        owner_pid, owner_start = self.pool.helper   # this helper's pid and start time, read once
        ContainerDir(plan.dir).write_state({**dataclasses.asdict(plan.record), "owner_pid": owner_pid,
                                            "owner_start": owner_start,
                                            "status": status, "cgroup": cgroup_name, **more})

    def place(self, plan, cgroup, slot):
        plan.cgroup = CgroupPlacement(procs_files=cgroup.procs_files(), version=cgroup.version,
                                      v1_mounts=cgroup.mount_table() if cgroup.version == 1 else [])
        self.containers[plan.id] = {"plan": plan, "cgroup": cgroup, "init_pid": None, "slot": slot,
                                    "unused_slot_dir": None}

    def op_exec(self, request, fds):
        plan = from_wire(ExecPlan, request["plan"])
        target = self.containers.get(plan.target)
        if target is None or target["init_pid"] is None:
            raise LookupError(f"container {plan.target} is not running")
        plan.target_pid = target["init_pid"]
        plan.cgroup_procs = target["cgroup"].procs_files()
        self.compile_seccomp(plan.process.security)
        stdio = dict(zip(FD_NAMES, _fds_or_none(fds, request["fd_names"])))
        try:
            from labkit.runtime.supervisor.exec import supervise_exec

            self.fork_supervisor(request["id"], Op.EXEC, plan, stdio, supervise_exec, hold=False)
        finally:
            for fd in stdio.values():
                _close(fd)

    def fork_supervisor(self, ident, kind, plan, stdio, supervise, hold):
        from labkit.runtime.supervisor.slot import keep_only

        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC) if hold else (None, None)
        pid = os.fork()
        if pid == 0:
            try:
                gc.disable()  # a collection would touch (and so copy) every shared page
                fds = {"error": error_w, "report": report_w, "go": go_r, **stdio}
                keep_only({fd for fd in fds.values() if fd is not None})   # as fork_alone: nothing else of ours
                supervise(plan, fds)
            finally:
                os._exit(126)
        for fd in (error_w, report_w, go_r):
            _close(fd)
        self.watch(Process(ident, kind, pid, error_r, report_r, go_w))

    def fork_alone(self, ident, plan, stdio):
        """Fork the container's PID 1 into a PID namespace made for it, with no supervisor
        (runtime/helper/first_process.py); it makes the other namespaces itself."""
        from labkit.runtime.supervisor.slot import keep_only
        from labkit.runtime.supervisor.supervise import start_alone

        made = []
        try:
            error_r, error_w = ready_slots.remember(made, os.pipe2(os.O_CLOEXEC))
            report_r, report_w = ready_slots.remember(made, os.pipe2(os.O_CLOEXEC))
            go_r, go_w = ready_slots.remember(made, os.pipe2(os.O_CLOEXEC)) if plan.hold else (None, None)
            ours, theirs = ready_slots.remember(made, socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
            pid = first_process.fork_into_new_pid_namespace(self.own_pid_namespace)
        except BaseException:
            ready_slots.close_all(made)
            raise
        if pid == 0:
            try:
                gc.disable()  # a collection would touch (and so copy) every shared page
                fds = {"error": error_w, "report": report_w, "go": go_r, "mount_namespace_made": theirs.fileno(), **stdio}
                # Nothing else of the helper's: other containers' pipes and held namespaces,
                # the owner's socket. An --init PID 1 stays this process for the container's life.
                keep_only({fd for fd in fds.values() if fd is not None})
                start_alone(plan, fds)
            finally:
                os._exit(126)
        for fd in (error_w, report_w, go_r):
            _close(fd)
        theirs.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            first_process.kill_and_reap(pid)
            for fd in (error_r, report_r, go_w):
                _close(fd)
            ours.close()
            raise
        process = Process(ident, Op.START, None, error_r, report_r, go_w)
        process.init_pid = self.containers[plan.id]["init_pid"] = pid
        process.pidfd, process.namespace_socket = pidfd, ours
        self.watch(process)

    def watch(self, process):
        self.processes[process.id] = process
        self.selector.register(process.error_r, selectors.EVENT_READ, lambda _f, p=process: self.on_error_pipe(p))
        self.selector.register(process.report_r, selectors.EVENT_READ, lambda _f, p=process: self.on_report(p))
        if process.pidfd is not None:
            self.selector.register(process.pidfd, selectors.EVENT_READ, lambda _f, p=process: self.on_pidfd(p))
        if process.namespace_socket is not None:
            self.selector.register(process.namespace_socket, selectors.EVENT_READ,
                                   lambda _f, p=process: self.on_namespace_made(p))

    def on_namespace_made(self, process):
        """A first process forked alone made its mount namespace ("m"), or closed the
        socket first (it failed, or exited): hold the namespace while it is alive."""
        if process.namespace_socket is None:
            return   # a stale event: the exit was handled earlier in the same select
        said = ready_slots.read_word(process.namespace_socket, 1)
        if said is None:
            return
        if said == b"m" and process.mount_namespace is None and process.status is None:
            process.mount_namespace = first_process.hold_mount_namespace(process.init_pid)
        self._close_namespace_socket(process)

    def _close_namespace_socket(self, process):
        if process.namespace_socket is not None:
            self.selector.unregister(process.namespace_socket)
            process.namespace_socket.close()
            process.namespace_socket = None

    def on_pidfd(self, process):
        """A first process forked alone has exited: reap it, say so, let go of its mount
        namespace (in the janitor: the unmounts are not the next request's), tear down."""
        if process.pidfd is None:
            return   # a stale event
        self.selector.unregister(process.pidfd)
        os.close(process.pidfd)
        process.pidfd = None
        self._close_namespace_socket(process)
        _, process.status = os.waitpid(process.init_pid, 0)
        if process.report_r is not None:
            self._close_report(process)
        self.report_exit(process)
        if process.mount_namespace is not None:
            self.janitor.let_go(process.mount_namespace)
            process.mount_namespace = None
        self.finish(process)

    def on_error_pipe(self, process):
        if process.error_r is None:
            return  # a stale event: finish() drained this pipe earlier in the same select
        chunk = os.read(process.error_r, 65536)
        if chunk:
            process.error_bytes += chunk
            return
        # EOF: the command was exec'd (nothing written) or setup failed (a JSON report).
        self.selector.unregister(process.error_r)
        os.close(process.error_r)
        process.error_r = None
        process.exec_done = True
        if process.error_bytes:
            try:
                process.error = json.loads(process.error_bytes)
            except ValueError:
                process.error = {"step": "setup", "message": process.error_bytes.decode(errors="replace")}
        self.maybe_announce_start(process)

    def on_report(self, process):
        if process.report_r is None:
            return  # a stale event: settle() read this pipe to its end earlier in the same select
        chunk = os.read(process.report_r, 4096)
        if not chunk and process.pidfd is not None:
            # A first process forked alone closed its report pipe (released, or set up
            # without a hold): its exit comes on its pidfd.
            self._close_report(process)
            return
        if not chunk:
            self.finish(process)
            return
        process.report_buffer += chunk
        while b"\n" in process.report_buffer:
            line, process.report_buffer = process.report_buffer.split(b"\n", 1)
            word, _, value = line.decode().partition(" ")
            if word == "init":
                process.init_pid = int(value)
                if process.kind == Op.START:
                    self.containers[process.id]["init_pid"] = process.init_pid
                self.maybe_announce_start(process)
            elif word == "ready":
                self.send(Op.HELD, id=process.id, pid=process.init_pid,
                          cgroup=self.containers[process.id]["cgroup"].name)
            elif word == "exit":
                process.status = int(value)
                self.report_exit(process)

    def maybe_announce_start(self, process):
        if process.started_sent or not process.exec_done or process.init_pid is None or process.error:
            return
        process.started_sent = True
        # Starts in a row: the slot this one took is remade while it runs, not once the
        # next request is on its way (a trace of back-to-back starts: the next request
        # waited for that fork), yet not before a short command's exit is told (traced: the
        # EXITED of a `true` waited for that fork; single starts 30 ms apart take 1.8 ms
        # less from request to exit without it, medians of paired runs).
        self.refill_at = time.monotonic() + REFILL_GRACE_SECONDS if self.starts > 1 else None
        container = self.containers.get(process.id) if process.kind == Op.START else None
        self.send(Op.STARTED, id=process.id, pid=process.init_pid,
                  setup_seconds=time.monotonic() - process.started_at,
                  cgroup=container["cgroup"].name if container else None,
                  slot=bool(container and container["slot"]))
        if container and not container["cgroup"].exists():
            # No cgroup to show that it runs (rootless: labkit ps reads "running" from its
            # processes there): say it here, after the answer, so only such a start pays.
            try:
                self.write_state(container["plan"], lifecycle.RUNNING, container["cgroup"].name, pid=process.init_pid)
            except FileNotFoundError:
                pass   # removed meanwhile

    def finish(self, process):
        """The supervisor closed its report pipe (it has exited, and let go of the
        container's mount namespace): reap it, and tear the container down. (A first
        process forked alone: reaped and told already, by `on_pidfd`.)"""
        if process.supervisor_pid is not None:
            self._close_report(process)
            _, supervisor_status = os.waitpid(process.supervisor_pid, 0)
            if process.status is None:
                process.status = supervisor_status   # it died before it could say how its child ended
        self.report_exit(process)
        if process.go_w is not None:
            _close(process.go_w)
        self.processes.pop(process.id, None)
        if process.container is not None:
            self.teardowns.append(lambda container=process.container: self.tear_down(container))

    def _close_report(self, process):
        self.selector.unregister(process.report_r)
        os.close(process.report_r)
        process.report_r = None

    def report_exit(self, process):
        """Tell the owner how the process ended, as soon as it has: on the supervisor's
        "exit" line, before the supervisor lets go of the mount namespace and is reaped."""
        if process.exit_reported:
            return
        process.exit_reported = True
        if process.error_r is not None:
            # Every writer of the error pipe is gone with the container: drain it.
            self.on_error_pipe_drain(process)
        status = process.status
        if process.kind != Op.START:
            self.send(Op.EXITED, id=process.id, status=status, error=process.error, pid=process.init_pid, stats=None)
            return
        container = process.container = self.containers.pop(process.id)
        cgroup, plan = container["cgroup"], container["plan"]
        if self.refill_at is not None:
            self.refill_at = time.monotonic()   # right after EXITED, unless a request waits
        self.logs.drain(plan.id)  # its last words are in the files before anyone hears it exited
        stats = _stats_dict(cgroup)
        self.send(Op.EXITED, id=process.id, status=status, error=process.error, pid=process.init_pid, stats=stats)
        # Recorded after the exit is told, before any other request is read: a reader of
        # state.json in the owner's process first waits for this helper to have caught up
        # (helper_client.caught_up), and one elsewhere could not know the exit before.
        if not plan.auto_remove:
            self.stopped[plan.id] = plan
            try:
                self.write_state(plan, lifecycle.EXITED, cgroup.name, exit_status=status)   # cgroup deleted only after
            except FileNotFoundError:
                pass  # its directory was removed meanwhile (by hand, or a gc): nothing left to record in
        else:
            # Gone for anyone who asks from now on: `image rm` must not count the layers of
            # a container whose directory is still being removed (by the janitor).
            ContainerDir(plan.dir).forget_state()

    def tear_down(self, container):
        """What an exited container left: its cgroup, and its directory when it is removed
        at exit. Off the owner's path: done when the helper has nothing else to do, or
        before it answers a request that must find it done (`settle`). The directories
        go to the janitor (runtime/helper/janitor.py): removing one on a busy disk takes
        longer than a whole start, and would sit in front of the next request."""
        container["cgroup"].delete()
        if container["unused_slot_dir"] is not None:
            self.janitor.remove(container["unused_slot_dir"])
        plan = container["plan"]
        if not plan.auto_remove:
            return
        spare = self.pool.spare_for(plan)
        if spare is None:
            self.janitor.remove(ContainerDir(plan.dir))
        else:   # its skeleton kept for the next slot's directory (ContainerDir.make_spare)
            self.janitor.recycle(ContainerDir(plan.dir), spare, sorted(plan.init_files))

    def settle(self, processes=None):
        """Finish the teardown of every exited container (or of `processes`): wait for
        their supervisors, which let go of the mount namespaces first, then tear down."""
        for process in [p for p in (processes or list(self.processes.values())) if p.exit_reported]:
            while process.report_r is not None:
                self.on_report(process)   # blocks until the supervisor's EOF
        while self.teardowns:
            self.teardowns.pop(0)()
        self.janitor.wait()

    def on_error_pipe_drain(self, process):
        while process.error_r is not None:
            self.on_error_pipe(process)

    def op_release(self, request, fds):
        process = self.processes[request["id"]]
        os.write(process.go_w, b"g")
        _close(process.go_w)
        process.go_w = None

    def op_signal(self, request, fds):
        process = self.processes.get(request["id"])
        if process and process.init_pid and not process.exit_reported:
            try:
                os.kill(process.init_pid, request["signal"])
            except ProcessLookupError:
                pass

    def op_kill(self, request, fds):
        """SIGKILL everything in the container (or the exec'd process)."""
        process = self.processes.get(request["id"])
        if process is None:
            # Never started (the request was interrupted before it left) or long gone:
            # say so, so that the owner does not wait for an exit that will not come.
            self.send(Op.FAILED, id=request["id"], error="no such running container", errno=None)
            return
        if process.exit_reported:
            return   # it has exited (EXITED is sent) and its supervisor is letting go: nothing to kill
        if process.kind == Op.START:
            self.containers[process.id]["cgroup"].kill()
        elif process.supervisor_pid:
            # The exec'd command runs two forks below its supervisor, which called
            # setsid: only the whole process group takes the command and its children.
            try:
                os.killpg(process.supervisor_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in (process.init_pid, process.supervisor_pid if not process.exec_done else None):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if process.go_w is not None:
            _close(process.go_w)  # a held container reads EOF and exits
            process.go_w = None

    def op_remove(self, request, fds):
        process = self.processes.get(request["id"])
        if process is not None and process.exit_reported:
            self.settle([process])
        if request["id"] in self.processes:
            raise RuntimeError(f"container {request['id']} is still running; stop it first")
        self.logs.close(request["id"])
        ContainerDir(request["dir"]).remove()
        self.stopped.pop(request["id"], None)
        self.send(Op.REMOVED, id=request["id"])

    def op_ping(self, request, fds):
        if request["settle"]:
            self.settle()   # answered once every exited container is torn down
            self.pool.shrink()   # and a burst's extra slots let go: what is held is comparable
        self.send(Op.PONG, id=request["id"], pid=os.getpid(), pool_size=self.pool.size,
                  ready_slots=[slot.cgroup_name for slot in self.pool.slots if slot.ready])

    def op_shutdown(self, request, fds):
        self.running = False

    def compile_seccomp(self, security):
        """The process's seccomp BPF, compiled by libseccomp here (once per profile and
        capability set, and kept: labkit.security.compiled), so that each container only
        loads it (one syscall)."""
        from labkit.security.compiled import seccomp_filter

        security.seccomp_program = seccomp_filter(security)

    # --- owner gone ----------------------------------------------------------------

    def shutdown(self):
        """Kill every container still here and remove what it made."""
        for process in list(self.processes.values()):
            self.op_kill({"id": process.id}, [])
        deadline = time.monotonic() + 10
        while self.processes and time.monotonic() < deadline:
            for key, _ in self.selector.select(timeout=0.1):
                if key.fileobj is not self.sock:
                    key.data(key.fileobj)
        self.janitor.close()   # no request comes any more: what is left is removed here, no fork for it
        while self.teardowns:
            self.teardowns.pop(0)()
        for container in self.containers.values():
            container["cgroup"].delete()
            if container["unused_slot_dir"] is not None:
                container["unused_slot_dir"].remove()
        self.pool.close()
        self.logs.close_all()
        for plan in [c["plan"] for c in self.containers.values()] + list(self.stopped.values()):
            ContainerDir(plan.dir).remove()


def _stats_dict(cgroup):
    try:
        return cgroup.stats().__dict__
    except OSError:
        return {}


def _fds_or_none(fds, names):
    by_name = dict(zip(names, fds))
    return [by_name.get(name) for name in FD_NAMES]


def _close(fd):
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


_keeper = None   # rootless: the connection to the home's labkit-netns (labkit.net.rootless_bridge)


def main(one_container=False):
    """The helper's loop, until its owner is gone. `one_container`: the owner starts one
    container and then leaves (no ready slots, no janitor process)."""
    if running_rootless() and os.geteuid() != 0:
        # First, before anything is made: root of the user's own user namespace (mapped
        # from /etc/subuid), in which every container's namespaces, mounts and files are.
        home = check_before_user_namespace()
        global _keeper
        from labkit.net import rootless_bridge   # as root, no helper needs it

        try:
            # The home's shared user namespace, so that its containers can share a bridge.
            _keeper = rootless_bridge.join(home)
        except Exception:  # noqa: BLE001
            enter_user_namespace(quiet=True)   # only --net bridge will say what is wrong
    fd = int(os.environ.pop("LABKIT_HELPER_FD"))
    sock = socket.socket(fileno=fd)
    # Interrupts are meant for the owner (the kernel's stop button signals its whole
    # process group); the owner decides what to kill.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    zygote = Zygote(sock, one_container)
    signal.signal(signal.SIGTERM, lambda *_: setattr(zygote, "running", False))
    syscalls.prctl_set_pdeathsig(signal.SIGTERM)
    syscalls.prctl_set_name("labkit-helper")
    owner = int(os.environ.get("LABKIT_OWNER_PID", "0"))
    if owner and os.getppid() != owner:
        sys.exit(0)  # the owner died before we set the death signal
    # Everything imported so far is shared with each forked container process; keep the
    # collector from walking it (walking writes, and a write copies the page).
    gc.freeze()
    zygote.serve()

