"""Where labkit keeps images, container state and caches (LABKIT_HOME), and who may enter.

Read-write layers and image layers hold whatever a container made, setuid-root copies of
binaries included: a host user who can walk to such a file can run it as root. So the
home is private, 0700, as Docker's data root, and so are `containers/` and `layers/`
(whatever the umask). A container with a user namespace runs as an unprivileged host uid
that must walk down to its layers; for it the home, `containers/` and `layers/` become
0710 with that uid's group, as Docker does for its remapped root: the container's root
gets in, other host users still do not. Homes left 0755 by older labkit are tightened on
first use.

A mode is only a defence if no one else can change it: a home another user owns (a
predictable path such as /tmp/labkit made first by a local user, left 0777) is refused,
and so is one below a directory another user could rename or replace it in.
"""

import grp
import os
import pwd
import stat
from pathlib import Path

from labkit.errors import ConfigError
from labkit.linux.namespaces import outside_ids
from labkit.linux.rootless import running_rootless

PRIVATE = 0o700
USER_NAMESPACES = 0o710  # group: the host gid of a user-namespace container's root
PRIVATE_SUBDIRS = ("containers", "layers")  # where containers' files lie, setuid copies included

_checked = set()  # homes made private by this process
CHECKED_OUTSIDE = "LABKIT_HOME_CHECKED"  # the home a parent checked before it entered the user namespace


def labkit_home() -> Path:
    """`$LABKIT_HOME`, else /var/lib/labkit as root, else ~/.local/share/labkit; checked
    (ours alone) and made private the first time this process uses it."""
    configured = os.environ.get("LABKIT_HOME")
    if configured:
        home = Path(os.path.abspath(configured))
    elif not running_rootless():
        home = Path("/var/lib/labkit")
    else:
        home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "labkit"
    if home not in _checked and os.environ.get(CHECKED_OUTSIDE) != str(home):
        make_private(home)
    _checked.add(home)
    return home


def check_before_user_namespace() -> Path:
    """Rootless, right before a process enters labkit's user namespace: the home checked
    on the host, where its owners' ids mean what they say (inside, host root and every
    other user all show as nobody), and that said to this process and its children."""
    home = labkit_home()
    os.environ[CHECKED_OUTSIDE] = str(home)
    return home


def make_private(home: Path) -> None:
    """Create `home` 0700, or tighten one that others may enter; refuse one that someone
    else owns or could replace. 0710 with a group other than root's is left alone: a
    user-namespace container may be using it."""
    try:
        _make_parents(home.parent)
        os.mkdir(home, PRIVATE)
    except FileExistsError:
        pass
    except OSError:
        if not os.path.lexists(home):
            return  # cannot be made here (read-only, not ours): the first write says so, naming the path
    check_trusted(home)
    st = os.stat(home)
    if not _is_private(st):
        os.chmod(home, PRIVATE)
    for name in PRIVATE_SUBDIRS:
        private_dir(home / name)


def private_dir(path: Path) -> Path:
    """`path` made if missing, 0700 whatever the umask (0710 kept: see the module's doc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, PRIVATE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ConfigError(f"{path} is not a directory of uid {os.geteuid()}'s; remove it and try again")
    if not _is_private(st):
        os.chmod(path, PRIVATE)
    return path


def check_trusted(home: Path) -> None:
    """Refuse a home that is not ours alone: owned by another user, a symlink another user
    owns, or below a directory another user owns or may write to (who could rename the
    home away and put one of their own in its place). Owners are compared as the ids they
    stand for outside a user namespace this process may be in: inside, 0 is whoever the map
    makes root, and every owner outside the map (the host's root, any other user) shows as
    uid 65534, which a process running as 65534 there would take for its own."""
    ids = _Ids()
    me = ids.uid(os.geteuid())
    if me is None:
        raise ConfigError(
            f"labkit runs as uid {os.geteuid()} of a user namespace, the id every file owner outside the "
            f"namespace's map shows as: it cannot tell whether LABKIT_HOME {home} is its own or another user's. "
            "Run labkit as another uid, or outside this user namespace")
    for path, st in _chain(home):
        owner = ids.uid(st.st_uid)
        if owner not in (0, me):
            what = "LABKIT_HOME" if path == home else f"{path}, above LABKIT_HOME {home},"
            raise ConfigError(
                f"{what} belongs to {ids.name(st.st_uid)}, not to {ids.name(os.geteuid())}: its owner could open it "
                f"to everyone and run, as root, the setuid files containers leave in it. Use a directory of your "
                f"own (unset LABKIT_HOME for {_default_home()}), or have its owner remove it")
        if path != home and stat.S_ISDIR(st.st_mode) and _others_may_write(st, ids):
            raise ConfigError(
                f"{path}, above LABKIT_HOME {home}, may be written by others (mode "
                f"{oct(stat.S_IMODE(st.st_mode))}, group {_group(st.st_gid)}, not sticky): another user could "
                "replace the home. "
                f"Put LABKIT_HOME below a directory only you (or root) may write to")
    if ids.uid(os.stat(home).st_uid) != me:
        raise ConfigError(f"LABKIT_HOME {home} belongs to {ids.name(os.stat(home).st_uid)}, not to "
                          f"{ids.name(os.geteuid())}: use a directory of your own (unset LABKIT_HOME for "
                          f"{_default_home()})")


class _Ids:
    """Owners as the ids they stand for outside this process's user namespace, if any."""

    def __init__(self):
        self.uid, self.gid = outside_ids("uid"), outside_ids("gid")

    def name(self, uid: int) -> str:
        outside = self.uid(uid)
        if outside is None:
            return f"a user outside this user namespace's map (it shows as uid {uid})"
        return _user(uid) if outside == uid else f"host uid {outside} (uid {uid} in this user namespace)"


def open_for_user_namespace(home: Path, uid: int, gid: int) -> None:
    """Let a user-namespace container's root (host `uid`/`gid`) walk into the home and down
    to its layers and its container directory, and no one else: 0710 with group `gid` on the
    home, `containers/` and `layers/`. Directories above the home are not labkit's and stay
    as they are: the container's supervisor walks from the home (runtime/supervisor/
    namespaces.py, `walk_from_the_home`), so a 0700 home directory above it is no obstacle."""
    make_private(home)
    give_to_user_namespace(home, uid, gid)


# Root's --userns map started at host id 100,000 before (runtime/spec.py,
# ROOT_USERNS_FIRST_ID says why it no longer does): a home opened to that group is opened
# to the new one instead, not refused as another map's.
FORMER_DEFAULT_GIDS = (100000,)


def give_to_user_namespace(home: Path, uid: int, gid: int) -> None:
    """0710 with group `gid` on a home already made and checked (`open_for_user_namespace`
    does both; a rootless helper, inside the user's namespace where the host's root shows
    as nobody, only this part)."""
    for directory in (home, *(home / name for name in PRIVATE_SUBDIRS)):
        st = os.stat(directory)
        if stat.S_IMODE(st.st_mode) == USER_NAMESPACES and st.st_gid == gid:
            continue
        if stat.S_IMODE(st.st_mode) == USER_NAMESPACES and st.st_gid not in (0, gid, *FORMER_DEFAULT_GIDS):
            raise ConfigError(
                f"LABKIT_HOME {home} is open to the user namespaces of host gid {st.st_gid}; a container "
                f"mapped to host uid/gid {uid}/{gid} needs a LABKIT_HOME of its own (or the same --userns map)")
        os.chown(directory, -1, gid)
        os.chmod(directory, USER_NAMESPACES)


def _chain(home: Path):
    """(path, lstat) for the home and each directory above it, as given and as resolved:
    a symlink on the way counts as much as a directory."""
    seen = set()
    for start in (home, Path(os.path.realpath(home))):
        for path in (start, *start.parents):
            if path not in seen:
                seen.add(path)
                yield path, os.lstat(path)


def _make_parents(directory: Path) -> None:
    """Missing directories above the home, 0755 whatever the umask (a 0777 one would be
    refused as replaceable)."""
    missing = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)


def _others_may_write(st, ids) -> bool:
    mode = st.st_mode
    if mode & stat.S_ISVTX:
        return False  # sticky (/tmp): only an entry's owner may rename it, and that owner was checked
    group = ids.gid(st.st_gid)
    group_may = mode & stat.S_IWGRP and (group is None or group not in (0, ids.gid(os.getegid()))
                                         or _others_in_group(group))
    return bool(mode & stat.S_IWOTH or group_may)


def _others_in_group(gid: int) -> bool:
    """Does another account have group `gid` (as seen outside a user namespace), as its
    primary group or as a member? Where every user's primary group is one shared group
    (`users`, USERGROUPS_ENAB no), a directory writable by "my" group is everyone's."""
    if gid == 0:
        return False
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        members = set()
    members |= {account.pw_name for account in pwd.getpwall() if account.pw_gid == gid}
    try:
        members.discard(pwd.getpwuid(os.geteuid()).pw_name)
    except KeyError:
        pass
    return bool(members)


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def _default_home() -> str:
    return "/var/lib/labkit" if not running_rootless() else "$XDG_DATA_HOME/labkit (~/.local/share/labkit)"


def _is_private(st) -> bool:
    mode = stat.S_IMODE(st.st_mode)
    return mode == PRIVATE or (mode == USER_NAMESPACES and st.st_gid != 0)
