"""labkit without root: a user namespace of the caller's own, mapped from /etc/subuid.

An ordinary user may make a user namespace (Debian allows unprivileged ones) and is root
in it, with every capability over the namespaces, mounts and files it owns. The kernel
lets him map only his own uid, though: a container whose image has files of uid 1000, or
whose process runs as one, needs more ids. `/etc/subuid` and `/etc/subgid` grant each
user a range (65,536 ids by default), and the setuid helpers `newuidmap`/`newgidmap`
(Debian package `uidmap`) write a map that uses it:

    0 -> the user's uid,   1..count -> the range's first id onwards

Without a range (or without the helpers), a single id is mapped (`0 <uid> 1`): a
container then runs as root and nobody else; that is said once, on stderr.

Ordinary containers run in that namespace itself, with its ids 0 to 65,535 (ORDINARY_IDS:
what an image has, nobody's 65534 included). A `--userns` container's own user namespace
maps the 65,536 ids after them, where the range holds them, so its root is nobody an
ordinary container can be (runtime/spec.py: rootless_user_map; a smaller range says so).

Every process that enters a user namespace here gets the same map, so a file one of them
made (a layer's file of uid 1000 is host id start + 999) means the same to the next:
nothing has to stay alive to be joined later (podman keeps a "pause" process for that).
The labkit helper enters one first thing (runtime/helper/zygote.py); what the caller must
do on such files itself (remove a tree, unpack a layer) runs in a short-lived process that
enters one the same way (`python -m labkit.linux.rootless`, as `podman unshare` does).
"""

import errno
import os
import pwd
import shutil
import sys
from dataclasses import dataclass

from labkit.linux import syscalls
from labkit.linux.namespaces import in_initial_user_namespace

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
HELPERS = {"uid": "newuidmap", "gid": "newgidmap"}
# Set in a process that entered labkit's user namespace (and inherited by its forks):
# the host uid it runs as. Its euid is 0 from then on, and it is still rootless.
_ENTERED_ENV = "LABKIT_ROOTLESS_UID"
# The ids of labkit's user namespace that ordinary (not --userns) containers use: 0 to 65,535.
ORDINARY_IDS = 65536
_said_single_id = False
_said_userns_shares = False


@dataclass(frozen=True)
class IdMap:
    """One user namespace map (uid_map or gid_map): lines of (inside, outside, count)."""
    kind: str                  # "uid" or "gid"
    lines: tuple

    @property
    def size(self) -> int:
        return sum(count for _, _, count in self.lines)

    def text(self) -> str:
        return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in self.lines)

    def helper_args(self) -> list:
        return [str(value) for line in self.lines for value in line]


def running_rootless() -> bool:
    """Is this labkit without the host's root: an ordinary user, or a process of one that
    entered labkit's user namespace (root there, the user on the host)?"""
    return os.geteuid() != 0 or _ENTERED_ENV in os.environ


def host_uid() -> int:
    """The uid on the host this process acts as (the caller's, also inside the namespace)."""
    return int(os.environ.get(_ENTERED_ENV, os.geteuid()))


def granted_ranges(path: str) -> list:
    """[(user name or uid, first id, count)] of every range /etc/subuid or /etc/subgid
    (`path`) grants; none where the file is missing or unreadable."""
    ranges = []
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ranges
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3:
            continue
        try:
            first, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count > 0:
            ranges.append((fields[0], first, count))
    return ranges


def subordinate_ranges(path: str, user: str, uid: int) -> list:
    """[(first id, count)] granted to `user` (by name or uid) in /etc/subuid or /etc/subgid."""
    return [(first, count) for owner, first, count in granted_ranges(path) if owner in (user, str(uid))]


def id_maps(uid=None, gid=None, user=None) -> tuple:
    """(uid map, gid map, why only one id is mapped or None) for the caller: 0 is the
    caller's own id, and 1 onwards the ranges /etc/subuid and /etc/subgid grant."""
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    if user is None:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
    maps, missing = [], []
    for kind, own, path in (("uid", uid, SUBUID), ("gid", gid, SUBGID)):
        lines, inside = [(0, own, 1)], 1
        for first, count in subordinate_ranges(path, user, uid):
            lines.append((inside, first, count))
            inside += count
        if len(lines) == 1:
            missing.append(f"{path} grants {user} no range")
        elif shutil.which(HELPERS[kind]) is None:
            missing.append(f"{HELPERS[kind]} is not installed (Debian package uidmap)")
            lines = lines[:1]
        maps.append(IdMap(kind, tuple(lines)))
    if missing or maps[0].size == 1 or maps[1].size == 1:
        maps = [IdMap(m.kind, m.lines[:1]) for m in maps]
        return maps[0], maps[1], "; ".join(missing)
    return maps[0], maps[1], None


def ids_of_the_user_namespace() -> int:
    """How many ids (uids and gids alike) labkit's user namespace maps for this caller:
    0 is the user, 1 onwards the range (1 where there is no range)."""
    if _ENTERED_ENV in os.environ and os.geteuid() == 0:
        sizes = []
        for kind in ("uid", "gid"):
            with open(f"/proc/self/{kind}_map") as handle:
                sizes.append(sum(int(line.split()[2]) for line in handle if line.strip()))
        return min(sizes)
    uid_map, gid_map, _ = id_maps()
    return min(uid_map.size, gid_map.size)


def say_single_id_once(why: str) -> None:
    global _said_single_id
    if why and not _said_single_id:
        _said_single_id = True
        print(f"labkit: rootless with one id only ({why}): containers run as root and no other user; "
              f"for the full range, as root: `apt-get install uidmap` and "
              f"`usermod --add-subuids {free_subid_range()} --add-subgids {free_subid_range()} USER`", file=sys.stderr)


def free_subid_range(count: int = 65536) -> str:
    """FIRST-LAST: `count` ids past every range /etc/subuid and /etc/subgid give (from
    100,000, where useradd starts): a range of the user's own. The same range for two
    users would let each enter the other's containers."""
    first = max([100000] + [start + size for path in (SUBUID, SUBGID) for _, start, size in granted_ranges(path)])
    first = -(-first // 65536) * 65536 if first > 100000 else first
    return f"{first}-{first + count - 1}"


def say_userns_shares_ids_once(free: int) -> None:
    """One line, once: a --userns container's ids are ordinary containers' ids, because the
    range (`free` ids past the user's own) is too small to keep them apart."""
    global _said_userns_shares
    if not _said_userns_shares:
        _said_userns_shares = True
        need = 2 * ORDINARY_IDS - 1
        print(f"labkit: --userns shares ids with your containers without it: your /etc/subuid range has {free} "
              f"ids, and keeping them apart takes {need} ({ORDINARY_IDS - 1} for the others, {ORDINARY_IDS} for "
              f"--userns), so this container's root is uid 1 of the others; to keep them apart, as root, add a "
              f"range no other user has: `usermod --add-subuids START-END --add-subgids START-END USER` "
              f"with {ORDINARY_IDS} ids or more", file=sys.stderr)


def enter_user_namespace(flags: int = 0, quiet: bool = False) -> None:
    """Make a user namespace (and the kinds in `flags` it will own), map the caller's ids
    into it and become its root. Only in a single-threaded process (unshare refuses
    CLONE_NEWUSER in a multi-threaded one)."""
    if _ENTERED_ENV in os.environ and os.geteuid() == 0:
        return   # entered already (a fork of a process that did)
    uid, gid = os.geteuid(), os.getegid()
    uid_map, gid_map, single = id_maps(uid, gid)
    if single and not quiet:
        say_single_id_once(single)
    if single:
        syscalls.unshare(syscalls.CLONE_NEWUSER | flags)
        write_own_maps(uid_map, gid_map)
    else:
        _unshare_mapped_by_helpers(syscalls.CLONE_NEWUSER | flags, uid_map, gid_map)
    _become_root_inside(uid)


def _become_root_inside(uid: int) -> None:
    """After entering or joining a user namespace as host `uid`: say so to our children,
    forget the cached answer, and take root's ids there."""
    os.environ[_ENTERED_ENV] = str(uid)
    # A fork of the caller may have asked before, outside: the answer is another one now.
    in_initial_user_namespace.cache_clear()
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    try:
        os.setgroups([])
    except PermissionError:
        pass   # setgroups is "deny" in a single-id namespace: the host's groups stay, unmapped


def join_user_namespace_of(pid: int) -> None:
    """Become root of the user namespace `pid` is in (one labkit made for this user, with
    the same map): what `enter_user_namespace` does, but shared with the processes
    already there. Only in a single-threaded process, and only from the host's
    namespace, where the caller owns that namespace and so may join it."""
    uid = os.geteuid()
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(fd, syscalls.CLONE_NEWUSER)
    finally:
        os.close(fd)
    _become_root_inside(uid)


def write_own_maps(uid_map: IdMap, gid_map: IdMap) -> None:
    """Map, from inside a user namespace just made, the ids the caller may map itself (its
    own only: no newuidmap)."""
    # A process may map its own ids only, and its gid only once setgroups is denied.
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    for kind, id_map in (("uid", uid_map), ("gid", gid_map)):
        with open(f"/proc/self/{kind}_map", "w") as handle:
            handle.write(id_map.text())


def _unshare_mapped_by_helpers(flags: int, uid_map: IdMap, gid_map: IdMap) -> None:
    """unshare, while a child left outside runs newuidmap and newgidmap on us (they map
    only a process of their caller's, from the parent namespace)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    parent = os.getpid()
    mapper = os.fork()
    if mapper == 0:
        code = 1
        try:
            import subprocess

            os.close(ready_w)
            os.close(done_r)
            if os.read(ready_r, 1) == b"g":
                errors = []
                for id_map in (uid_map, gid_map):
                    done = subprocess.run([HELPERS[id_map.kind], str(parent), *id_map.helper_args()],
                                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
                    if done.returncode != 0:
                        errors.append(f"{HELPERS[id_map.kind]}: {done.stderr.strip() or done.returncode}")
                os.write(done_w, ("\n".join(errors) or "ok").encode())
                code = 0
        finally:
            os._exit(code)
    os.close(ready_r)
    os.close(done_w)
    try:
        unshared = False
        try:
            syscalls.unshare(flags)
            unshared = True
        finally:
            os.write(ready_w, b"g" if unshared else b"x")
            os.close(ready_w)
        answer = b""
        while True:
            chunk = os.read(done_r, 4096)
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(done_r)
        os.waitpid(mapper, 0)
    if answer != b"ok":
        raise OSError(errno.EPERM, "could not map the user namespace's ids with newuidmap/newgidmap: "
                      f"{answer.decode(errors='replace') or 'the mapper died'}")


def command_in_user_namespace(argv: list) -> list:
    """`argv` run as root of a fresh labkit user namespace (`podman unshare` for labkit)."""
    return [sys.executable, "-m", "labkit.linux.rootless", "--", *argv]


def remove_tree(path) -> None:
    """Remove a directory tree the caller owns on the host but whose files may belong to
    ids of its range (a container's or a layer's): as the user the kernel refuses to
    enter or unlink those; root of the user namespace may."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    if not running_rootless() or os.geteuid() == 0:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        shutil.rmtree(path)
        return
    except OSError:
        pass   # a file or directory of another id of the range: remove it from inside
    import subprocess

    subprocess.run(command_in_user_namespace(["rm", "-rf", "--one-file-system", path]),
                   stdin=subprocess.DEVNULL, check=False)


def main(argv) -> int:
    """`python -m labkit.linux.rootless -- COMMAND...`: COMMAND as root of labkit's user
    namespace (what `podman unshare` is to podman)."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m labkit.linux.rootless -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        enter_user_namespace(quiet=True)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
