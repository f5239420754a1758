"""Users and groups by name, looked up in an image's own /etc/passwd and /etc/group
(as runc and podman resolve `USER` and `--chown`), never in the host's."""

import os
import stat

from labkit.errors import BadImageInput
from labkit.images.diff import find_in_stack
from labkit.linux import paths


# /etc/passwd of a large site is a few MiB at most; more is not a user table.
TABLE_MOST = 4 << 20


def read_image_file(lowers_top_first: list, relative: str) -> str | None:
    """The text of `relative` as the layer stack shows it, or None where it is not a
    regular file; a link on the way is followed only inside the layer it is in (never onto
    the host). Opened without blocking and read at most TABLE_MOST bytes: an image whose
    /etc/passwd is a FIFO held its build (and the store lock) forever, and a link to
    /dev/zero would have read until memory ran out."""
    found = find_in_stack(lowers_top_first, relative)
    if found is None:
        return None
    layer = found[:-len(relative)].rstrip("/")
    root = paths.open_root(layer)
    try:
        fd = paths.open_in_root(root, relative, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    finally:
        os.close(root)
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(TABLE_MOST).decode("utf-8", "replace")


def _lookup(text: str | None, name: str) -> tuple | None:
    for line in (text or "").splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 3 and fields[2].isdigit():
            return int(fields[2]), int(fields[3]) if fields[3].isdigit() else 0
    return None


def resolve_owner(spec: str, lowers_top_first: list, what: str) -> tuple:
    """(uid, gid) of 'user[:group]' (names or numbers) in the image; a user alone takes
    their primary group, a number alone gid = uid (as Docker's --chown)."""
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid, gid = int(user), int(user)
    else:
        found = _lookup(read_image_file(lowers_top_first, "etc/passwd"), user)
        if found is None:
            raise BadImageInput(f"{what}: no user named {user!r} in the image's /etc/passwd; "
                             "use a number or add the user first")
        uid, gid = found
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = _lookup(read_image_file(lowers_top_first, "etc/group"), group)
            if found is None:
                raise BadImageInput(f"{what}: no group named {group!r} in the image's /etc/group")
            gid = found[0]
    return uid, gid
