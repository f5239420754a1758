"""kind="namespaces": the submission's kernel in a user namespace and every other kind,
a delegated cgroup with limits, a root filesystem of read-only host binds and its own
directories. What runs where:

- here, in the grader: the cgroup, the directories, the registry entry that lets a later
  grader clean up after a killed one, and the keeper process started below;
- `first_process.py`: the keeper and the sandbox's PID 1 (which builds the sandbox);
- `enter.py`: the kernel's launch command, which joins PID 1's namespaces.

Root inside is an unprivileged host uid (a range of 2^18 ids per sandbox, so that the
sandbox's own `--userns` containers fit): it owns the sandbox's namespaces and nothing on
the host. A kernel that distrusts itself needs kind="vm" instead (docs/labs.md).
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys

import labkit
from labkit.errors import HostError
from labkit.grading.sandbox.base import BaseSandbox
from labkit.grading.sandbox.cgroup import SandboxCgroup, kill_all, remove_trees
from labkit.linux import processes
from labkit.linux.syscalls import CLONE_NEWNET

REGISTRY = "/run/labkit/sandboxes"
FIRST_UID = 1_000_000_000      # far above /etc/subuid's usual ranges (100000 + 65536 n)
IDS_PER_SANDBOX = 1 << 18
MOST_SANDBOXES = 4096
READ_ONLY_FROM_HOST = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NS_GET_PARENT = 0xB702         # ioctl: the parent of a PID (or user) namespace
START_TIMEOUT = 30.0           # at least; as long as the submission's budget (an emulated VM needs minutes)


class NamespaceSandbox(BaseSandbox):
    kind = "namespaces"

    def __init__(self, limits=None, workdir=None):
        super().__init__(limits, workdir)
        self.slot = None
        self.uid = None
        self.cgroup = None
        self.kernel_dir = None
        self._keeper = None
        self._pidns = None
        self._pid1 = None   # a pidfd of PID 1

    # --- made -----------------------------------------------------------------------

    def _open(self):
        _check_user_namespaces()
        sweep()
        self.slot = _claim_slot(self.directory)
        self.uid = FIRST_UID + self.slot * IDS_PER_SANDBOX
        self.kernel_dir = self.directory / "kernel"
        self.kernel_dir.mkdir(mode=0o700)
        for path in (self.scratch, self.home, self.kernel_dir):
            os.chown(path, self.uid, self.uid)
        (self.directory / "root").mkdir()
        self.cgroup = SandboxCgroup(str(self.slot), self.uid, self.limits)
        self.cgroup.create()
        _record(self.slot, {"cgroups": list(self.cgroup.dirs.values())})
        self.cgroup_paths = self.cgroup.paths
        self.pid = self._start()
        self._pid1 = os.pidfd_open(self.pid)
        self.netns_path = f"/proc/{self.pid}/ns/net"
        self._pidns = os.stat(f"/proc/{self.pid}/ns/pid")

    def _start(self) -> int:
        config = {
            "owner": os.getpid(), "uid": self.uid, "count": IDS_PER_SANDBOX, "hostname": "sandbox",
            "root": str(self.directory / "root"), "scratch": str(self.scratch),
            "procs": self.cgroup.first_process_joins, "init_cgroup": self.cgroup.init_inside,
            "keeper_joins": self.cgroup.kernel_joins() if self.cgroup.version == 2 else [],
            "cgroup_mounts": self.cgroup.mounts_inside,
            "read_only": _read_only_paths(), "symlinks": _top_level_symlinks(),
            "read_write": [str(self.scratch), str(self.home), str(self.kernel_dir)],
        }
        ready_r, ready_w = os.pipe()
        try:
            self._keeper = subprocess.Popen(
                [sys.executable, "-m", "labkit.grading.sandbox.first_process", str(ready_w)],
                pass_fds=(ready_w,), stdin=subprocess.PIPE, cwd="/", env=_plain_env())
        finally:
            os.close(ready_w)
        with self._keeper.stdin as config_pipe:
            config_pipe.write(json.dumps(config).encode())
        with os.fdopen(ready_r) as ready:
            answer = _read_with_timeout(ready, max(START_TIMEOUT, self.limits.wall_seconds))
        if not answer.startswith("ready"):
            raise HostError(f"the grading sandbox could not be made: {answer.strip() or 'its first process died'}")
        pid1 = [p for p in self.cgroup.pids() if p != self._keeper.pid]
        if len(pid1) != 1:
            raise HostError(f"the grading sandbox's first process is not alone in its cgroup: {pid1}")
        return pid1[0]

    # --- the kernel -----------------------------------------------------------------------

    def launch_prefix(self) -> list:
        return [sys.executable, "-m", "labkit.grading.sandbox.enter", str(self.pid),
                ",".join(self.cgroup.kernel_joins()), str(self.kernel_dir / "kernel.log"), "--"]

    def kernel_env(self) -> dict:
        return {"LABKIT_HOME": str(self.home), "HOME": "/root", "TMPDIR": "/tmp", "USER": "root",
                "LOGNAME": "root", "IPYTHONDIR": "/root/.ipython"}

    def connection_settings(self) -> dict:
        return {"transport": "ipc", "ip": str(self.kernel_dir / "kernel"),
                "connection_file": str(self.kernel_dir / "connection.json")}

    def hand_over(self, path) -> None:
        os.chown(path, self.uid, self.uid)

    # --- what the grader reads ---------------------------------------------------------------

    def pids(self) -> list:
        return self.cgroup.pids() if self.cgroup else []

    def owns_pid(self, pid) -> bool:
        """In the sandbox's cgroup and in its PID namespace (or one made inside it)."""
        return pid in self.pids() and self._in_our_pid_namespace(pid)

    def _in_our_pid_namespace(self, pid) -> bool:
        try:
            fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)
        except OSError:
            return False
        try:
            while True:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == (self._pidns.st_dev, self._pidns.st_ino):
                    return True
                try:
                    parent = fcntl.ioctl(fd, NS_GET_PARENT)
                except OSError:
                    return False  # reached the host's PID namespace
                os.close(fd)
                fd = parent
        finally:
            os.close(fd)

    def in_netns(self, fn, *args, **kwargs):
        """Run `fn` in a thread of ours that joined the sandbox's network namespace (a
        thread may: setns(CLONE_NEWNET) is per thread). Sockets it opens stay in there."""
        from labkit.linux.syscalls import setns
        from labkit.linux.threads import call_in_thread

        def inside():
            fd = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            return fn(*args, **kwargs)

        return call_in_thread("labkit-sandbox-netns", inside)

    # --- gone ---------------------------------------------------------------------------------

    def _kill_everything(self):
        if self._keeper is not None and self._keeper.poll() is None:
            self._keeper.kill()   # its PID 1 follows (PDEATHSIG), and with it the PID namespace
        if self.cgroup is not None:
            # PID 1 first (the kernel then ends its whole PID namespace), then what is
            # left: the kernels' launchers outside it, what was forked meanwhile.
            if self._pid1 is not None:
                try:
                    signal.pidfd_send_signal(self._pid1, signal.SIGKILL)   # never a reused PID
                except ProcessLookupError:
                    pass
            kill_all(list(self.cgroup.dirs.values()))

    def _close(self):
        self._kill_everything()
        if self._keeper is not None:
            self._keeper.wait()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self._pid1 is not None:
            os.close(self._pid1)
            self._pid1 = None
        if self.slot is not None:
            _release_slot(self.slot)


def _check_user_namespaces():
    try:
        allowed = int(open("/proc/sys/user/max_user_namespaces").read())
    except OSError:
        allowed = 1
    if allowed == 0:
        raise HostError("a grading sandbox needs user namespaces, and this host allows none "
                        "(user.max_user_namespaces = 0); raise it with `sysctl user.max_user_namespaces=15000` "
                        "or grade with --sandbox vm")


def _read_only_paths() -> list:
    paths = [p for p in READ_ONLY_FROM_HOST if os.path.isdir(p) and not os.path.islink(p)]
    # The Python that runs the kernel (its installation and the venv), and labkit itself where it is not installed in it
    # (an editable install): only labkit's package directory, not the repository around it
    # (whose instructor/labs hold the solutions).
    for path in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.abspath(labkit.__file__))):
        if not any(path == p or path.startswith(p + "/") for p in paths):
            paths.append(path)
    return paths


def _top_level_symlinks() -> dict:
    return {p: os.readlink(p) for p in READ_ONLY_FROM_HOST if os.path.islink(p)}


def _plain_env() -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8",
            "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def _read_with_timeout(handle, timeout) -> str:
    import select

    ready, _, _ = select.select([handle], [], [], timeout)
    return handle.readline() if ready else f"no answer within {timeout:g} s"


# --- the registry: who made which sandbox, for the sweep after a killed grader -----------

def _entry(slot) -> str:
    return os.path.join(REGISTRY, f"{slot}.json")


def _claim_slot(directory) -> int:
    os.makedirs(REGISTRY, mode=0o700, exist_ok=True)
    record = {**processes.identity(os.getpid()), "directory": str(directory), "cgroups": []}
    for slot in range(MOST_SANDBOXES):
        try:
            fd = os.open(_entry(slot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        return slot
    raise HostError(f"{MOST_SANDBOXES} grading sandboxes exist already (see {REGISTRY})")


def _record(slot, fields) -> None:
    with open(_entry(slot)) as handle:
        record = json.load(handle)
    record.update(fields)
    temporary = _entry(slot) + ".new"
    with open(temporary, "w") as handle:
        json.dump(record, handle)
    os.replace(temporary, _entry(slot))


def _release_slot(slot) -> None:
    try:
        os.unlink(_entry(slot))
    except FileNotFoundError:
        pass


def sweep() -> list:
    """Remove what sandboxes of dead graders left: their processes, cgroups, directories."""
    removed = []
    try:
        names = os.listdir(REGISTRY)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(REGISTRY, name)
        try:
            with open(path) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        if processes.is_running(record.get("owner_pid"), record.get("owner_start")):
            continue
        remove_trees(record.get("cgroups", []))
        shutil.rmtree(record.get("directory") or "/nonexistent", ignore_errors=True)
        os.unlink(path)
        removed.append(name[:-5])
    return removed
