"""What a test looks at to find leftovers on this host: labkit's cgroups and mounts, a
container's cgroup (by the name its state records), the helper's pool slots, grading
sandboxes, temp dirs.

Each check looks only at what its own test (or test run) made: several test runs share
this host (other engineers, the lead's fresh-clone `make test`), and a check that compared
host-wide state before and after would count their live objects as this test's leaks.
What ties a thing to its maker:
- a container's cgroup: the leaf name its state records (container_cgroup_leaf);
- a pool slot's cgroup: its helper's (PID, start time), in its name (helper_slot_cgroups);
- a mount: the test's own LABKIT_HOME in its line (labkit_mounts(home));
- a grading sandbox: its directory, made under a temp root of this run's own
  (own_temp_root), and its registry entry naming that directory (sandbox_leftovers);
- a throw-away user: a name with a random token, and an id range no other user holds
  (throwaway_users.py).
Host-wide on purpose: settings the host has once (net.ipv4.ip_forward, core_pattern):
no run owns them, any run that changes them changes them for all.

A plain module, not conftest.py: instructor/labs/ has a conftest.py of its own, and in a
session that collects both, `from conftest import ...` inside a test may find that one."""

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path


def labkit_cgroups() -> set:
    """Every cgroup below a labkit parent, in every hierarchy of this host."""
    found = set()
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        depth = root.count("/") - 3
        if depth > 3:
            dirs[:] = []
            continue
        if os.path.basename(root) == "labkit":
            found.update(os.path.join(root, d) for d in dirs)
            dirs[:] = []
    return found


_cgroup_leaves = {}   # container id -> the leaf name of its cgroup, once seen


def container_cgroup_leaf(ident, home=None) -> str:
    """The leaf name of a container's cgroup: `<id>`, or the pool slot's name that served
    it (runtime/helper/ready_slots.py), as its state.json records. Remembered from the first look, so
    that a check for leftovers still knows it after the state is gone."""
    if ident not in _cgroup_leaves:
        from labkit.runtime.container_dir import ContainerDir

        directory = ContainerDir(os.path.join(home, "containers", ident)) if home else ContainerDir.of(ident)
        state = directory.read_state() or {}
        if not state.get("cgroup"):
            return ident   # not made yet (or never): ask again later
        _cgroup_leaves[ident] = state["cgroup"].rsplit("/", 1)[-1]
    return _cgroup_leaves[ident]


def helper_identity(helper) -> tuple:
    """(PID, start time) of a helper, as its slots' names carry it. A PID alone is reused (this
    host's pid_max is 32768, and a busy host wraps it in minutes): a dead helper's slot
    cgroups not swept yet would count as those of a new helper that got its PID. Give the
    pair itself for a helper that may be gone; a PID is looked up now."""
    from labkit.linux.processes import start_time

    return tuple(helper) if isinstance(helper, tuple) else (helper, start_time(helper))


def helper_slot_cgroups(helper) -> dict:
    """{cgroup path: its pids} for the slots of this helper (a PID, or (PID, start time))."""
    from labkit.cgroups.slot_cgroups import owner_of

    identity = helper_identity(helper)
    slots = {}
    for path in labkit_cgroups():
        owner = owner_of(path.rsplit("/", 1)[-1])
        if owner is not None and owner == identity:
            try:
                with open(os.path.join(path, "cgroup.procs")) as procs:
                    slots[path] = {int(line) for line in procs if line.strip()}
            except FileNotFoundError:
                pass
            except OSError as error:   # ENODEV: removed between open and read (a slot discarded)
                if error.errno != errno.ENODEV:
                    raise
    return slots


def only_ready_slots_left(helper, timeout=10.0) -> dict:
    """The helper's slot cgroups that are not ready slots (each holds exactly one process,
    named labkit-slot, waiting for a plan): a used slot torn down holds nothing and must
    be gone. Retried for `timeout` seconds: a slot being made is empty for a moment."""
    import time

    from labkit.runtime.inside.slot import SLOT_PROCESS_NAME

    def not_ready():
        wrong = {}
        for path, pids in helper_slot_cgroups(helper).items():
            names = set()
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/comm") as comm:
                        names.add(comm.read().strip())
                except (FileNotFoundError, ProcessLookupError):
                    names.add("?")
            if len(pids) != 1 or names != {SLOT_PROCESS_NAME}:
                wrong[path] = sorted(pids)
        return wrong

    deadline = time.monotonic() + timeout
    while (wrong := not_ready()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return wrong


def empty_slot_cgroups(helper, timeout=10.0) -> list:
    """The helper's slot cgroups with no process in them: a slot used by a container that
    has exited, not torn down. (A ready slot holds its waiting first process; one used by
    a container still running, maybe another test's, holds that container.) Retried for
    `timeout` seconds: a slot being made is empty for a moment."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        empty = sorted(path for path, pids in helper_slot_cgroups(helper).items() if not pids)
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(0.05)


def labkit_mounts(home) -> list:
    """The host's mounts of labkit (or overlay) that name `home`, a LABKIT_HOME of this
    test's: a container's mounts are made under its home (and an overlay's options name
    its layers there). Others' (podman's overlays, another run's containers) are not this
    test's to judge."""
    home = str(home)
    with open("/proc/self/mountinfo") as table:
        return [line for line in table
                if ("labkit" in line or re.search(r" - overlay ", line)) and _names(line, home)]


def _names(line: str, path: str) -> bool:
    """Does the mountinfo `line` name `path` or a path below it? (mountinfo escapes a
    space as \\040; `path` must be followed by / or the end of a field, so /tmp/a is not
    found in /tmp/ab.)"""
    escaped = path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    return re.search(re.escape(escaped) + r"(?=[/ ,:]|$)", line.rstrip("\n")) is not None


# --- temp dirs and grading sandboxes ----------------------------------------------------------

@contextlib.contextmanager
def own_temp_root(prefix="labkit-run-"):
    """A temp root of this test's own, as TMPDIR (for the processes it starts) and as this
    process's tempfile.tempdir, for the block: what labkit makes with mkdtemp (a grading
    sandbox's directory, an experiment's scratch store) is made there, so a check for
    leftovers looks there and nowhere else. Made in /tmp, 0711 (a --userns container's
    root passes through to its layers); removed after the block."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o711)
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved[1]
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]


def remove_temp_root(root) -> None:
    """After the check: what a leak left there is not left for the next run."""
    shutil.rmtree(root, ignore_errors=True)


SANDBOX_REGISTRY = "/run/labkit/sandboxes"    # labkit.grading.sandbox.namespaces.REGISTRY


def sandbox_cgroups() -> set:
    found = set()
    for root in Path("/sys/fs/cgroup").iterdir():
        parent = root / "labkit-sandbox"
        if parent.is_dir():
            found.update(str(p) for p in parent.iterdir() if p.is_dir())
    return found


def sandbox_leftovers(temp_root, cgroups_before=frozenset()) -> list:
    """What grading sandboxes made under `temp_root` (own_temp_root) left on the host: their
    directories, their mounts (which name the directory), their cgroups. A sandbox cgroup
    (labkit-sandbox/<slot>) is this run's when the slot's registry entry names a directory
    under `temp_root`; one with no entry at all is an orphan (an entry is written before the
    cgroup is made and removed after it is gone), counted when it is new since
    `cgroups_before`. Another grader's live sandbox is never counted."""
    temp_root = str(temp_root)
    left = [f"directory {path}" for path in sorted(Path(temp_root).glob("labkit-sandbox-*"))]
    with open("/proc/self/mountinfo") as table:
        left += [f"mount {line.split()[4]}" for line in table if _names(line, temp_root)]
    for path in sorted(sandbox_cgroups()):
        slot = os.path.basename(path)
        try:
            with open(os.path.join(SANDBOX_REGISTRY, f"{slot}.json")) as handle:
                directory = json.load(handle).get("directory") or ""
        except FileNotFoundError:
            if path not in cgroups_before:
                left.append(f"cgroup {path} (no sandbox claims it)")
            continue
        except (OSError, ValueError):
            continue   # being rewritten (os.replace): a live grader's
        if directory == temp_root or directory.startswith(temp_root + "/"):
            left.append(f"cgroup {path} (of {directory})")
    return left


# --- what a test's commands made, however briefly --------------------------------------------

class NamesMade:
    """Every name made in `directory` from now on (inotify: IN_CREATE, IN_MOVED_TO), also one
    that is there for a moment only: a container that cannot start is made and removed
    again faster than a look would find it. Its names, once the test is done, tell which
    of the host's cgroups are its own (the id is the cgroup's leaf)."""

    IN_MOVED_TO, IN_CREATE = 0x80, 0x100

    def __init__(self, directory):
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or self._libc.inotify_add_watch(self.fd, os.fsencode(str(directory)),
                                                       self.IN_CREATE | self.IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"cannot watch {directory} with inotify")
        self.names = set()

    def read(self) -> set:
        import struct

        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.names
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                if mask & 0x4000:   # IN_Q_OVERFLOW: a name may be missing, so the check cannot be trusted
                    raise AssertionError("inotify's queue overflowed: the names made are not all known")
                if name:
                    self.names.add(name)
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)
