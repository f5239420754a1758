"""Ready slots ("seeds"): a container's cgroup, namespaces and first process, made ahead.

Runs in the helper: the pool it keeps, and the hand-over of a plan to a slot. The slot's
own two processes run runtime/supervisor/slot.py (S) and runtime/inside/slot.py (P).

Why it exists: on this kernel the first write of a process into a `cgroup.procs` file
takes 6–17 ms. Moving a process between cgroups takes `cgroup_threadgroup_rwsem` for
writing, and once that lock has gone idle taking it waits for an RCU grace period; we may
not change the host's mounts (`favordynmods`) or sysctls (`rcu_expedited`) to avoid it.
Making the cgroup, the namespaces and two forks cost ~4 ms more. None of it depends on
the container's spec, so the helper does it ahead, in its idle time, for the next
containers that follow (three by default, up to five while starts come back to back):

    helper ──fork──> S  supervisor: setsid, unshare uts|ipc|pid|net, then
                     │   makes the fresh cgroup (default device list written)
                     └─fork──> P  PID 1 of the new PID namespace: joins the cgroup (the
                                  slow write, here, off anyone's path), says "ready" and
                                  waits on a socket for its plan and stdio

As root on the host there is no S: the helper makes the PID namespace itself (`unshare`,
then `setns` back into its own after the fork) and forks P into it, which takes S's steps
alone. S was a whole Python process per container (its fork from the helper, its
copy-on-write faults, its exit: 6.5 ms of CPU a container in a `perf` profile of 200
back-to-back starts, a third of the stream's CPU). The helper then learns P's exit on a
pidfd, and holds P's mount namespace (opened once P says it made it) until the exit is
told, then lets the janitor close it (runtime/helper/janitor.py), as S did. A rootless
helper cannot go back to the host's PID namespace (that needs the host's CAP_SYS_ADMIN):
it forks S as drawn above.

At `start` a plan that fits (`fits`) gets a slot: the helper writes the plan's limits
into the slot's cgroup and hands P the plan; P goes on with `set_up_container`
(runtime/inside/recipe.py), the same steps as a container started without a slot, and
S (or the helper, for P forked alone) reports `init`/`exit` as a container's supervisor does. Any other plan (a user or time namespace, a shared namespace,
other kinds, I/O limits) takes that path, unchanged.

The root made ahead. Once a container was started in a slot, the slots made after it
also make the root of a container like it (its image's layers and masks; removed when it ends, so
its upper layer is volatile; no volumes, no tmpfs, not read-only: `prepared_root_key`), in a
directory of their own (LABKIT_HOME/slots/<leaf>/, laid out as a container's, its /etc
files empty): P makes its mount and cgroup namespaces, mounts the overlay, /proc, /dev,
/sys and the masks, pivots into the root and brings up loopback before any plan comes
(runtime/inside/recipe.py `make_root`). At `start`, a plan with the same root takes such
a slot first: the helper renames the slot's directory to the container's and writes its
/etc files in place (the root has them bound already); P, in it already, sets the
hostname and goes on from the release (stdio, user, seccomp, exec). (P pivots before
its plan comes: detaching the host's tree after a pivot waits for an RCU grace period,
3.6 ms of each start in a profile of 200 in a row with a VM busy beside them, 0.3 ms in
paired runs on a quiet machine.) Any other plan that fits a slot
(another image, a volume, a container that stays, or the same image whose layers were
removed and made again since: their inodes are checked) may take it too: P goes back
into the host's mount namespace (an fd it kept), makes a copy of its own again and builds
the plan's root there, as without a slot; the helper lets go of the namespace with the
root built ahead, and the slot's directory is removed after. A slot's directory goes with the slot (`discard`),
or with the container it became; a dead helper's is swept (runtime/client/state.py).

A slot is used once and its cgroup deleted with its container, never returned to the
pool: some of a cgroup's counters cannot be reset (v1 `memory.oom_control`'s oom_kill
and `pids.events`, v2 `cpu.stat` and `memory.events`), and a reused cgroup would show a
student the previous container's OOM kills, refused forks and CPU time.

A slot's cgroup keeps its own name, `labkit/pool-<helper pid>-<helper start>-<n>` (v2
cannot rename a cgroup), recorded in state.json and the `started` message. The name says
whose it is, so a sweep removes a dead helper's empty slots and never a live one's
(labkit/cgroups/slot_cgroups.py, which also writes a container's limits into a slot's cgroup).
"""

import dataclasses
import gc
import json
import os
import select
import selectors
import signal
import socket
from dataclasses import dataclass

from labkit.cgroups import container_hierarchy
from labkit.cgroups.slot_cgroups import can_serve, slot_leaf, spare_prefix
from labkit.linux.processes import start_time
from labkit.linux.sockets import peer_gone
from labkit.runtime.container_dir import ContainerDir, slots_root
from labkit.runtime.helper.first_process import (
    fork_into_new_pid_namespace, hold_mount_namespace, kill_and_reap, own_pid_namespace,
)
from labkit.runtime.plan import StartPlan, to_wire

DEFAULT_SIZE = 3   # a burst of back-to-back starts finds one ready while the next is being made
# Back to back, a start comes every ~10 ms and a slot takes 20-35 ms to be ready (its fork,
# its root, its cgroup's RCU wait, on the same 2 cores): three ran dry for 11-13 % of the
# starts of 200 in a row, and each such start takes the slow way (its own fresh cgroup).
# A start that finds every slot still being made adds one, up to BURST_EXTRA more; after
# SHRINK_AFTER_SECONDS without a start the pool is its size again.
BURST_EXTRA = 2
SHRINK_AFTER_SECONDS = 30.0


def size_from_environment() -> int:
    """`LABKIT_POOL` in the helper's environment: how many slots to keep (0: none)."""
    text = os.environ.get("LABKIT_POOL", str(DEFAULT_SIZE))
    if not text.isdigit():
        raise ValueError(f"LABKIT_POOL={text!r}: give a number of ready slots (0 turns the pool off)")
    return int(text)


def fits(plan: StartPlan, version: int) -> bool:
    """Can a slot (the default namespaces made, a default cgroup joined) serve this plan?"""
    from labkit.runtime.spec import DEFAULT_NAMESPACES   # only once a slot exists: not in a one-shot helper

    # A bounded read-write layer is a tmpfs the helper mounts at start, after a slot's
    # mount namespace was copied: the slot would not see it.
    # fuse-overlayfs's daemon is started by a container's own supervisor, before its PID namespace.
    return (plan.overlay == "kernel" and set(plan.namespaces) == set(DEFAULT_NAMESPACES) and not plan.join
            and plan.user_map is None
            and not plan.time_offsets and plan.storage_size is None and can_serve(plan.limits, version))


def prepared_root_key(plan: StartPlan):
    """What a root made ahead depends on, for a plan that fits a slot; None where the
    root is the container's own (volumes, tmpfs, a read-only root) or where it outlives
    its run: not made ahead. Only a container removed when it ends gets one (a `%%container`
    cell, `run(remove=True)`): the kernel's mount table keeps the paths the overlay was
    mounted with (the slot's directory), and a container that stays (`-d`, a container
    to commit) is one whose mounts students read next to its directory's paths."""
    if not plan.auto_remove or plan.volumes or plan.tmpfs or plan.read_only or plan.storage_size is not None:
        return None
    return (tuple(plan.lower[1:]), tuple(plan.masked_paths), tuple(plan.readonly_paths),
            tuple(sorted(plan.init_files)), tuple(sorted(plan.namespaces)))


def _layer_identities(lower: list):
    """(device, inode, ctime) of each image layer's directory: a layer removed and made
    again under its digest is another directory, which a root made ahead does not show."""
    found = []
    for path in lower:
        info = os.stat(path)
        found.append((info.st_dev, info.st_ino, info.st_ctime_ns))
    return found


@dataclass
class Slot:
    cgroup_name: str
    supervisor_pid: int | None   # S; None where the helper forked P itself (`pid`)
    error_r: int          # the first process's close-on-exec error pipe (EOF: exec'd)
    report_r: int | None  # S's "init PID" / "exit STATUS" lines
    plan_socket: socket.socket   # the helper's end; the first process waits on the other
    pid: int | None = None       # P, forked by the helper (no S)
    pidfd: int | None = None     # readable once P has exited
    mount_namespace: int | None = None   # P's, held by the helper once P made it ahead (no S)
    ready: bool = False   # the first process said so: it is in its cgroup
    root_key: tuple | None = None   # the root it made ahead (prepared_root_key), in `directory`
    directory: ContainerDir | None = None
    layers: list | None = None      # _layer_identities of its image's layers when it was made
    use_root: bool = False          # (taken) the plan it serves takes that root


class Pool:
    """The helper's ready slots. Everything here runs in the helper, single-threaded; the
    helper's selector tells the pool when a slot's first process says "ready", or dies
    while it waits (killed from outside: the slot is discarded at once, and replaced)."""

    def __init__(self, size: int, selector):
        self.selector = selector
        self.hierarchy = container_hierarchy() if size else None
        # Slots carry the default device list: no pool where the host cannot enforce one.
        self.size = size if size and "devices" in self.hierarchy.controllers else 0
        self.extra = 0   # slots added for a burst (BURST_EXTRA at most)
        self.slots = []
        self.made = 0
        self.spares_made = 0
        self.failures = 0   # slots found dead in a row; a host where they cannot be made stops trying
        self.helper = (os.getpid(), start_time(os.getpid()))
        self.root_plan = None   # the last container started in a slot: the root the next slots make ahead
        self.root_key = None
        # No S: the helper makes each slot's PID namespace and goes back to its own.
        self.own_pid_namespace = own_pid_namespace() if self.size else None
        self.janitor = None   # the helper's (runtime/helper/janitor.py): discarded slots' roots and directories

    def wants_more(self) -> bool:
        return bool(self.size) and len(self.slots) < self.size + self.extra

    def shrink(self) -> None:
        """Back to its size after a burst: the slots added for it go (the youngest first)."""
        self.extra = 0
        while len(self.slots) > self.size:
            self.discard(self.slots[-1])

    def learn(self, plan: StartPlan) -> None:
        """A container was started: slots made from now on make its root, if it fits one."""
        if not self.size or not fits(plan, self.hierarchy.version):
            return
        key = prepared_root_key(plan)
        if key is not None and key != self.root_key:
            self.root_plan, self.root_key = plan, key

    def fill_one(self) -> None:
        """Fork one slot: its first process P into a PID namespace the helper makes for it
        (as root), or its supervisor S, which makes one and forks P. Costs the helper one
        fork; the rest happens in the slot. A host that refuses (no memory, a pids limit)
        gets no slot: the next start takes the usual path, and reports the host's error if
        it has one."""
        from labkit.runtime.supervisor.slot import keep_only, start_alone, supervise_slot   # once a slot is wanted

        self.made += 1
        leaf = slot_leaf(*self.helper, self.made)
        cgroup_name = f"{self.hierarchy.parent}/{leaf}"
        directory, root_plan, layers = self._root_ahead(leaf) or (None, None, None)
        alone = self.own_pid_namespace is not None
        made = []
        try:
            error_r, error_w = remember(made, os.pipe2(os.O_CLOEXEC))
            report_r, report_w = (None, None) if alone else remember(made, os.pipe2(os.O_CLOEXEC))
            ours, theirs = remember(made, socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
            pid = fork_into_new_pid_namespace(self.own_pid_namespace) if alone else os.fork()
            pidfd = None
            if alone and pid:
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    kill_and_reap(pid)
                    raise
        except OSError:
            close_all(made)
            if directory is not None:
                directory.remove()
            self.failed()
            return
        if pid == 0:
            try:
                gc.disable()  # a collection would touch (and so copy) every page shared with the helper
                fds = {"error": error_w, "plan": theirs.fileno(), **({} if alone else {"report": report_w})}
                keep_only(set(fds.values()))
                (start_alone if alone else supervise_slot)(self.hierarchy, cgroup_name, self.helper[0], fds, root_plan)
            finally:
                os._exit(126)
        for fd in (error_w, report_w):
            if fd is not None:
                os.close(fd)
        theirs.close()
        slot = Slot(cgroup_name, None if alone else pid, error_r, report_r, ours, pid=pid if alone else None,
                    pidfd=pidfd, root_key=self.root_key if directory else None, directory=directory, layers=layers)
        self.slots.append(slot)
        self.selector.register(ours, selectors.EVENT_READ, lambda _sock: self.on_slot_message(slot))

    def spare_for(self, plan: StartPlan):
        """Where the skeleton of this exited container's directory is kept for the next
        slot's (the slots make directories: they make a root ahead), or None: removed."""
        if self.root_plan is None or plan.storage_size is not None or plan.user_map is not None:
            return None
        self.spares_made += 1
        home = ContainerDir(plan.dir).home
        return slots_root(home) / f"{spare_prefix(*self.helper)}{self.spares_made}"

    def _root_ahead(self, leaf: str):
        """(directory, plan, layer identities) of the root the next slot builds ahead, or
        None (no container was started in a slot yet, or its layers are gone)."""
        if self.root_plan is None:
            return None
        home = ContainerDir(self.root_plan.dir).home   # the same filesystem: renamed to the container's
        directory = ContainerDir(slots_root(home) / leaf)   # made by the slot's supervisor, off the helper's loop
        try:
            layers = _layer_identities(self.root_plan.lower[1:])
        except OSError:
            self.root_plan = self.root_key = None   # its image is gone: make plain slots
            return None
        plan = dataclasses.replace(self.root_plan, dir=str(directory.path), rootfs=str(directory.rootfs),
                                   upper=str(directory.upper), work=str(directory.work),
                                   lower=[str(directory.init), *self.root_plan.lower[1:]])
        return directory, plan, layers

    def on_slot_message(self, slot: Slot) -> None:
        """"ready", or the end of the socket: the slot's first process died while it waited."""
        if slot not in self.slots:
            # A stale event: the slot was taken (its plan handed over, its socket closed) or
            # discarded (found dead by a start) earlier in the same select. Read as a death,
            # it was discarded again: the helper raised out of its loop, or killed a container.
            return
        said = read_word(slot.plan_socket, 16)
        if said is None:
            return
        if said == b"ready":
            slot.ready = True
            self.failures = 0
            if slot.pid is not None and slot.root_key is not None:
                slot.mount_namespace = hold_mount_namespace(slot.pid)   # made with the root, ahead
            return
        self.discard(slot)   # setup failed, or it was killed: no use to anyone
        if not slot.ready and slot.root_key is not None and slot.root_key == self.root_key:
            self.root_plan = self.root_key = None   # its root could not be made ahead: plain slots from now on
        elif not slot.ready:
            self.failed()   # died before it was ready: the host may not let us make slots

    def take(self, plan: StartPlan) -> Slot | None:
        """A ready slot for this plan, or None (it does not fit, or no slot is ready): one
        that built this plan's root ahead first. A slot's `use_root` says whether the plan
        takes the root it built (else the slot's first process leaves it for a mount
        namespace copied from the host's again, and builds the plan's own)."""
        if not self.size or not fits(plan, self.hierarchy.version):
            return None
        key = prepared_root_key(plan)
        ready = [slot for slot in self.slots if slot.ready]
        for slot in sorted(ready, key=lambda slot: key is None or slot.root_key != key):
            if peer_gone(slot.plan_socket):
                self.discard(slot)   # died since the last look
                continue
            self.slots.remove(slot)
            self.selector.unregister(slot.plan_socket)
            slot.use_root = key is not None and slot.root_key == key and self._same_root(slot, plan)
            return slot
        if self.made and self.extra < BURST_EXTRA:
            self.extra += 1   # none ready, though slots were made before: starts come faster than slots
        return None

    def _same_root(self, slot: Slot, plan: StartPlan) -> bool:
        """Its image's layers are the directories the slot's overlay holds (not removed and
        made again since), and the container's directory is free for the slot's."""
        try:
            return not os.path.lexists(plan.dir) and _layer_identities(plan.lower[1:]) == slot.layers
        except OSError:
            return False

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= 3:
            self.size = 0   # this host cannot make slots (e.g. no device control): stop trying

    def hand_over(self, slot: Slot, plan: StartPlan, wire: dict, fds: dict) -> None:
        """Send the plan (with its seccomp program, which JSON cannot carry) and the fds
        (stdio and `go`) to the slot's first process. OSError: that process is gone.
        `wire` is the plan as the client sent it (checked by `from_wire` already): it goes
        on as it came, with the helper's part added, instead of being encoded again from
        `plan` (a walk of every field: 0.2–0.7 ms on the start's path)."""
        program = plan.process.security.seccomp_program or b""
        wire = {**wire, "cgroup": to_wire(plan.cgroup),
                "process": {**wire["process"], "security": {**wire["process"]["security"], "seccomp_program": None}}}
        names = [name for name, fd in fds.items() if fd is not None]
        head = json.dumps({"plan": wire, "fd_names": names, "use_root": slot.use_root}).encode()   # JSON escapes any NUL
        socket.send_fds(slot.plan_socket, [head + b"\0" + program], [fds[name] for name in names])

    def discard(self, slot: Slot) -> None:
        """Kill a slot's processes and remove its cgroup (a slot not handed over)."""
        if slot in self.slots:
            self.slots.remove(slot)
            self.selector.unregister(slot.plan_socket)
        slot.plan_socket.close()
        if slot.pid is not None:
            kill_and_reap(slot.pid)   # PID 1 of its namespace: reaped once all of it is gone
            for fd in (slot.pidfd, slot.error_r):
                os.close(fd)
            if slot.mount_namespace is not None:
                self._let_go(slot.mount_namespace)   # the root built ahead is unmounted with it
        else:
            self._discard_supervised(slot)
        self.hierarchy.open(slot.cgroup_name).delete()
        if slot.directory is not None:
            if self.janitor is not None:
                self.janitor.remove(slot.directory)   # after the namespace: the janitor keeps the order
            else:
                slot.directory.remove()

    def _let_go(self, namespace: int) -> None:
        """In the janitor where there is one: the last close of a mount namespace unmounts
        its tree, and waits for an RCU grace period to do it."""
        if self.janitor is not None:
            self.janitor.let_go(namespace)
        else:
            os.close(namespace)

    def _discard_supervised(self, slot: Slot) -> None:
        first = _exit_of_first_process(slot.report_r)
        for kill in (os.killpg, os.kill):   # S calls setsid early; before that, only S itself
            try:
                kill(slot.supervisor_pid, signal.SIGKILL)   # P follows by its death signal
            except (ProcessLookupError, PermissionError):
                pass
        os.waitpid(slot.supervisor_pid, 0)
        if first is not None:
            # P is not our child: its exit (and its namespaces' teardown, a root built
            # ahead included) is awaited on a pidfd, so that nothing of it outlives the slot.
            waiting = select.poll()   # not select(): a helper with many containers holds fds past 1024
            waiting.register(first, select.POLLIN)
            waiting.poll(5000)
            os.close(first)
        for fd in (slot.error_r, slot.report_r):
            os.close(fd)

    def close(self) -> None:
        for slot in list(self.slots):
            self.discard(slot)


def _exit_of_first_process(report_r):
    """A pidfd of the slot's first process, from S's "init PID" line (None: not said yet,
    or gone already)."""
    os.set_blocking(report_r, False)
    try:
        said = os.read(report_r, 64)
    except OSError:
        return None
    if not said.startswith(b"init "):
        return None
    try:
        return os.pidfd_open(int(said.split()[1]))
    except (OSError, ValueError, IndexError):
        return None


def read_word(sock, size: int):
    """One short message a slot's or a first process's socket holds (b"": its end, or an
    error), or None: nothing yet."""
    try:
        return sock.recv(size, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def close_all(made: list) -> None:
    """Close what `remember` kept (fds and sockets) after a step failed."""
    for item in made:
        if isinstance(item, socket.socket):
            item.close()
        else:
            os.close(item)


def remember(made: list, pair):
    """`pair`, kept in `made` too (closed by `close_all` if a later step fails)."""
    made.extend(pair)
    return pair
