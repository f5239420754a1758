"""Throw-away ordinary users for the rootless tests: made with useradd (a home, a group, a
65,536-id range in /etc/subuid and /etc/subgid) and removed with everything they own,
also when the test fails. Needs root; the caller skips where it is not root.

    with throwaway_user() as student:
        student.run(["id", "-u"])           # as that user, its own HOME and XDG dirs
"""

import contextlib
import os
import pwd
import secrets
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from labkit.linux.processes import kill_each

SUBORDINATE_FILES = ("/etc/subuid", "/etc/subgid")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str

    def environment(self, extra=None) -> dict:
        """What a login gives: HOME, USER, a PATH, the XDG data dir below HOME."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "PATH": os.environ["PATH"],
                "LANG": "C.UTF-8", **(extra or {})}

    def run(self, command, *, env=None, cgroup_procs=None, timeout=600, cwd=None, **kwargs):
        """`command` as this user (no supplementary groups). With `cgroup_procs`, the process
        first joins that cgroup as root, then becomes the user: how a login lands in the
        cgroup systemd made for the session."""
        def become_user():
            if cgroup_procs is not None:
                with open(cgroup_procs, "w") as procs:
                    procs.write("0")
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)

        return subprocess.run(command, env=self.environment(env), cwd=cwd or self.home, preexec_fn=become_user,
                              capture_output=True, text=True, timeout=timeout, **kwargs)


def subordinate_range(name, path) -> tuple | None:
    with open(path) as table:
        for line in table:
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[0] == name:
                return int(fields[1]), int(fields[2])
    return None


def _drop_subordinate_lines(name):
    """userdel removes them on current shadow; older ones leave them: make sure (under the
    lock _free_range takes, so another run's new line is not lost to this rewrite)."""
    with _subordinate_lock():
        _drop_lines_of(name)


def _drop_lines_of(name):
    for path in SUBORDINATE_FILES:
        with open(path) as table:
            lines = table.readlines()
        kept = [line for line in lines if line.split(":", 1)[0] != name]
        if kept != lines:
            with open(path, "w") as table:
                table.writelines(kept)


SUBORDINATE_LOCK = "/run/lock/labkit-tests-subordinate-ids.lock"


@contextlib.contextmanager
def _subordinate_lock():
    """The host-wide lock on /etc/subuid and /etc/subgid that every test run takes. /run/lock
    is made if missing: the v2 lane's guest has /run but not /run/lock."""
    import fcntl

    os.makedirs(os.path.dirname(SUBORDINATE_LOCK), mode=0o1777, exist_ok=True)
    with open(SUBORDINATE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_range(name, region, ids) -> int:
    """Give `name` the first range of `ids` ids in `region` (1000 ranges) that no line of
    /etc/subuid or /etc/subgid overlaps, and return its first id. Chosen and written under a
    lock all test runs on this host take: two runs (a PID modulo 1000 each, as it was) could
    pick the same range, and the end of one test killed every process in it, the other
    run's user's too."""
    with _subordinate_lock():
        taken = []
        for path in SUBORDINATE_FILES:
            with open(path) as table:
                for line in table:
                    fields = line.strip().split(":")
                    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                        taken.append((int(fields[1]), int(fields[1]) + int(fields[2])))
        for index in range(1000):
            first = region + index * ids
            if first + ids > 4_294_967_295:   # (uid_t's last id, -1, is no id)
                break
            if not any(start < first + ids and first < end for start, end in taken):
                subprocess.run(["usermod", "--add-subuids", f"{first}-{first + ids - 1}",
                                "--add-subgids", f"{first}-{first + ids - 1}", name], check=True, capture_output=True)
                return first
    raise AssertionError(f"no free range of {ids} ids from {region} in /etc/subuid and /etc/subgid")


def processes_of(uids) -> list:
    """The PIDs of the processes running as one of `uids`."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid in uids:
                pids.append(int(entry))
        except FileNotFoundError:
            pass
    return pids


def end_processes(uids) -> None:
    """SIGKILL every process running as one of `uids`, by PID, until none is left: the
    throw-away user's (its own uid or its range), which only the test started."""
    left = kill_each(lambda: processes_of(uids), timeout=5)
    if left:
        raise AssertionError(f"processes of a throw-away user would not end: {left}")


@contextlib.contextmanager
def throwaway_user(prefix="lkt", ids=65536):
    """A fresh user `<prefix><6 hex>`, with a subordinate id range of `ids` ids (65,536:
    Debian's default; more lies in a region of its own, so a user of each size may exist at
    once); removed afterwards."""
    name = f"{prefix}{secrets.token_hex(3)}"
    user = None
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name],
                   check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        os.chmod(entry.pw_dir, 0o700)
        # A range of its own, far from useradd's (100000 + 65536 n: also the --userns
        # default of root's containers) and the grading sandboxes' (from 10^9).
        _drop_subordinate_lines(name)
        first = _free_range(name, 3_200_000_000 if ids == 65536 else 3_300_000_000, ids)
        user = User(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
        yield user
    finally:
        if user is not None:
            end_processes({user.uid, *range(first, first + ids)})
        removed = subprocess.run(["userdel", "--remove", name], capture_output=True, text=True)
        _drop_subordinate_lines(name)
        if removed.returncode not in (0, 12):   # 12: the home could not be removed (already gone)
            raise AssertionError(f"userdel {name} failed ({removed.returncode}): {removed.stderr.strip()}")


def readable_by_others(path) -> str | None:
    """Why another user cannot read `path` (each directory above must let others pass), or None."""
    path = Path(path)
    for directory in (path, *path.parents):
        mode = os.stat(directory).st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return f"{directory} (mode {oct(stat.S_IMODE(mode))}) lets no other user through"
    if not os.stat(path).st_mode & stat.S_IROTH:
        return f"{path} is not readable by other users"
    return None


def why_user_cannot_run_this_checkout() -> str | None:
    """Why a throw-away user cannot run labkit from this checkout and this venv's packages
    (a clone below a 0700 directory, such as a mktemp dir under /tmp), or None."""
    import sysconfig

    repo = Path(__file__).resolve().parent.parent
    for path in (repo / "labkit", Path(sysconfig.get_paths()["purelib"])):
        why = readable_by_others(path)
        if why:
            return f"this checkout cannot be read by an ordinary user: {why}; clone it somewhere readable"
    return None


@contextlib.contextmanager
def delegated_subtree(user, mount="/sys/fs/cgroup"):
    """A cgroup v2 subtree `labkit-test-<user>` owned by `user`, as systemd's Delegate=yes
    makes `user@UID.service`: the directory and its cgroup.procs, cgroup.subtree_control and
    cgroup.threads chowned; the session's processes go in a child of it (`session`: pass its
    cgroup.procs to `User.run`), so the subtree itself holds none and may hand controllers
    down. Yields (subtree, session); the tree and whatever is left in it are removed after.
    Needs root on a host whose own cgroups are v2 (the caller skips elsewhere)."""
    root = os.path.join(mount, f"labkit-test-{user.name}")
    session = os.path.join(root, "session")
    with open(os.path.join(mount, "cgroup.subtree_control"), "w") as control:
        control.write("+memory +cpu +pids")
    os.mkdir(root)
    try:
        os.mkdir(session)
        for path in (root, session):
            for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                os.chown(os.path.join(path, name), user.uid, user.gid)
        yield root, session
    finally:
        remove_cgroup_tree(root)


def remove_cgroup_tree(root):
    """Kill what is left and rmdir bottom-up: the tree is the test's own."""
    from labkit.cgroups.v2 import CgroupV2

    for directory, _, _ in sorted(os.walk(root), key=lambda entry: -entry[0].count("/")):
        if os.path.isdir(directory):
            CgroupV2(directory, directory).delete()
