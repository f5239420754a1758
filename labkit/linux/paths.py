"""Paths resolved inside a root directory, as if that directory were "/".

A container's root and a build's layer hold symlinks someone else wrote: `/cfg ->
/tmp/x` in an image, or a link planted by the first source of a `COPY`. Joining
`rootfs + "/cfg"` and handing that to open(2) or mount(2) lets the host's kernel follow
the link on the host. Here every lookup starts at an fd of the root and a link, `..` or
an absolute name can never climb above it: `openat2(2)` with RESOLVE_IN_ROOT does that
in the kernel (Linux 5.6+); on older kernels, or where a seccomp filter refuses the
call, the same walk is done one component at a time with O_NOFOLLOW.

The fds returned are O_CLOEXEC; mount(2) takes them as `/proc/self/fd/N` (see `fd_path`).
"""

import ctypes
import errno
import os
import stat

from labkit.linux.syscalls import libc

SYS_openat2 = 437  # the same number on every architecture (added after the 5.1 unification)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
MAX_SYMLINKS = 40  # as the kernel's own path walk

_openat2_works = None  # probed on first use: True, or False when the kernel lacks it


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_root(path) -> int:
    """An O_PATH fd of the directory that plays "/" for `open_in_root`."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH, mode: int = 0o644, use_openat2=None) -> int:
    """open(2) of `path` as seen from a process whose root is `root_fd`.

    A trailing link is followed (inside the root) unless `flags` has O_NOFOLLOW.
    `use_openat2=False` forces the component walk (tests run both)."""
    flags |= os.O_CLOEXEC
    relative = path.lstrip("/") or "."
    if use_openat2 is None:
        use_openat2 = _have_openat2()
    if use_openat2:
        return openat2(root_fd, relative, flags, mode if flags & os.O_CREAT else 0,
                       RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    return _walk(root_fd, relative, flags, mode)


def make_dirs_in_root(root_fd: int, path: str, mode: int = 0o755, use_openat2=None) -> int:
    """mkdir -p of `path` inside the root; returns an O_PATH fd of the last directory.
    A link on the way is followed inside the root; a dangling one is refused (ENOENT)."""
    current = open_in_root(root_fd, "", os.O_PATH | os.O_DIRECTORY, use_openat2=use_openat2)
    walked = ""
    try:
        for name in path.split("/"):
            if name in ("", "."):
                continue
            walked += "/" + name
            try:
                found = open_in_root(root_fd, walked, os.O_PATH | os.O_DIRECTORY, use_openat2=use_openat2)
            except FileNotFoundError:
                try:
                    os.mkdir(name, mode, dir_fd=current)
                except FileExistsError:
                    raise OSError(errno.ENOENT, f"{walked} is a link to a directory that does not exist "
                                                "inside the root", walked) from None
                found = open_in_root(root_fd, walked, os.O_PATH | os.O_DIRECTORY, use_openat2=use_openat2)
            os.close(current)
            current = found
    except BaseException:
        os.close(current)
        raise
    return current


def fd_path(fd: int) -> str:
    """A name for `fd` that mount(2) and friends accept: the kernel resolves it to the
    very file the fd holds, without another lookup of the original path."""
    return f"/proc/self/fd/{fd}"


def openat2(dir_fd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    how = _OpenHow(flags, mode, resolve)
    fd = libc.syscall(ctypes.c_long(SYS_openat2), ctypes.c_int(dir_fd), os.fsencode(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2 {path!r} inside the root: {os.strerror(err)}", path)
    return fd


def _have_openat2() -> bool:
    global _openat2_works
    if _openat2_works is None:
        try:
            os.close(openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT))  # AT_FDCWD
            _openat2_works = True
        except OSError as error:
            # ENOSYS: kernel before 5.6; EPERM: a seccomp filter (older Docker profiles) refuses it
            if error.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _openat2_works = False
    return _openat2_works


def _walk(root_fd: int, path: str, flags: int, mode: int) -> int:
    """What RESOLVE_IN_ROOT does, in user space: each component is opened with
    O_NOFOLLOW from the directory above it; a link is read and its target walked
    from the root (absolute) or from where we are (relative); `..` at the root stays
    there. `stack` holds the fds of the directories walked, root first."""
    stack = [os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)]
    remaining = [name for name in path.split("/") if name not in ("", ".")]
    follow_last = not flags & os.O_NOFOLLOW
    links = 0
    try:
        while remaining:
            name = remaining.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not remaining
            try:
                st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                if last and flags & os.O_CREAT:
                    return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=stack[-1])
                raise
            if stat.S_ISLNK(st.st_mode) and (not last or follow_last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                remaining[:0] = [part for part in target.split("/") if part not in ("", ".")]
                continue
            if last:
                return _open_checked(name, flags | os.O_NOFOLLOW, mode, stack[-1], st)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            stack.append(_open_checked(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, 0, stack[-1], st))
        return os.open(".", flags, mode, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def _open_checked(name, flags, mode, dir_fd, looked_at):
    """open with O_NOFOLLOW, then make sure it is what we looked at: a link swapped in
    since (O_PATH would hand back the link itself) is refused as the kernel refuses it."""
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (looked_at.st_dev, looked_at.st_ino):
        os.close(fd)
        raise OSError(errno.ELOOP, f"{name!r} changed while it was being resolved", name)
    return fd
