"""The one door to the kernel's routing netlink (pyroute2), shared by bridge, veth and IPAM.

Why a worker thread: pyroute2 0.9 drives its socket with asyncio and, if the calling
thread already runs an event loop, it tries to use that loop and fails ("This event loop
is already running"). A Jupyter kernel runs every cell inside its event loop, so every
netlink call goes through one worker thread that has no loop of its own. The single
worker also serialises the calls of a process, so one IPRoute socket can be kept open.
"""

import errno
import os
import threading

from labkit.errors import HostError
from labkit.linux import capabilities

_lock = threading.Lock()
_worker = None          # (pid, executor): a forked child must not reuse its parent's
_local = threading.local()


def require_net_admin():
    if not capabilities.has("net_admin"):
        raise HostError("container networking needs CAP_NET_ADMIN (root on the host) to make bridges and "
                        "veth pairs; run labkit as root, or use --net none or --net host")


def netlink(work):
    """Run `work(ipr)` with an open pyroute2 IPRoute, in the netlink worker thread."""
    global _worker
    with _lock:
        if _worker is None or _worker[0] != os.getpid():
            from concurrent.futures import ThreadPoolExecutor   # ~4 ms: paid at the first call, not by an import

            _worker = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="labkit-netlink"))
        executor = _worker[1]
    try:
        future = executor.submit(_run, work)
    except RuntimeError:
        # The interpreter is exiting (atexit): executors take no new work then, and no
        # event loop runs any more either, so the call is safe in this thread.
        return _run(work)
    return future.result()


def _run(work):
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        from pyroute2 import IPRoute  # ~0.1 s to import: only when a network is used

        ipr = _local.ipr = IPRoute()
    try:
        return work(ipr)
    except Exception as error:  # NetlinkError carries .code, OSError .errno
        if getattr(error, "code", getattr(error, "errno", None)) == errno.EPERM:
            raise HostError(f"the kernel refused a network change ({error}); labkit needs CAP_NET_ADMIN") from None
        raise


def is_missing(error) -> bool:
    """A netlink error meaning "no such interface/address/route": already gone, which is fine."""
    return getattr(error, "code", None) in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)
