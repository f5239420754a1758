"""Where labkit keeps images, container state and caches (LABKIT_HOME), and who may enter.

Read-write layers and image layers hold whatever a container made, setuid-root copies of
binaries included: a host user who can walk to such a file can run it as root. So the
home is private, 0700, as Docker's data root. A container with a user namespace runs as
an unprivileged host uid that must walk down to its layers; for it the home becomes 0710
with that uid's group, as Docker does for its remapped root: the container's root gets
in, other host users still do not. Homes left 0755 by older labkit are tightened on
first use.
"""

import os
import stat
from pathlib import Path

from labkit.errors import ConfigError

PRIVATE = 0o700
USER_NAMESPACES = 0o710  # group: the host gid of a user-namespace container's root

_checked = set()  # homes made private by this process


def labkit_home() -> Path:
    """`$LABKIT_HOME`, else /var/lib/labkit as root, else ~/.local/share/labkit; made
    private the first time this process uses it."""
    configured = os.environ.get("LABKIT_HOME")
    if configured:
        home = Path(configured)
    elif os.geteuid() == 0:
        home = Path("/var/lib/labkit")
    else:
        home = Path.home() / ".local" / "share" / "labkit"
    if home not in _checked:
        make_private(home)
        _checked.add(home)
    return home


def make_private(home: Path) -> None:
    """Create `home` 0700, or tighten one that others may enter. 0710 with a group other
    than root's is left alone: a user-namespace container may be using it."""
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(home, PRIVATE)
    except FileExistsError:
        pass
    except OSError:
        return  # cannot be made here (read-only, not ours): the first write says so, naming the path
    st = os.stat(home)
    if st.st_uid != os.geteuid():
        return  # not ours to change (a LABKIT_HOME someone set up for us)
    if not _is_private(st):
        os.chmod(home, PRIVATE)


def open_for_user_namespace(home: Path, uid: int, gid: int) -> None:
    """Let a user-namespace container's root (host `uid`/`gid`) walk into the home, and
    no one else: 0710 with group `gid`. Directories above the home are not labkit's:
    they must already let others through."""
    for directory in home.parents:
        if not os.stat(directory).st_mode & 0o001:
            raise ConfigError(
                f"a user-namespace container runs as host uid {uid}, which cannot enter {directory} "
                f"(mode {oct(stat.S_IMODE(os.stat(directory).st_mode))}); allow it with `chmod o+x {directory}` "
                "or put LABKIT_HOME somewhere others may pass through")
    make_private(home)
    st = os.stat(home)
    if stat.S_IMODE(st.st_mode) == USER_NAMESPACES and st.st_gid == gid:
        return
    if stat.S_IMODE(st.st_mode) == USER_NAMESPACES and st.st_gid not in (0, gid):
        raise ConfigError(
            f"LABKIT_HOME {home} is open to the user namespaces of host gid {st.st_gid}; a container "
            f"mapped to host uid/gid {uid}/{gid} needs a LABKIT_HOME of its own (or the same --userns map)")
    os.chown(home, -1, gid)
    os.chmod(home, USER_NAMESPACES)


def _is_private(st) -> bool:
    mode = stat.S_IMODE(st.st_mode)
    return mode == PRIVATE or (mode == USER_NAMESPACES and st.st_gid != 0)
