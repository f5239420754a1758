"""The submission's Jupyter kernel, started through its sandbox.

A jupyter_client KernelManager whose launch command is prefixed by the sandbox's way in
(nothing for kind="none"), with the sandbox's environment and working directory. With
the kernel in its own network namespace, TCP on 127.0.0.1 would be the kernel's own
loopback, which the grader cannot reach: the kernel talks ZMQ over Unix sockets
(`ipc` transport) in a directory both sides see at the same path.

That directory is the kernel's to write (it binds its sockets there), so the grader, host
root, never connects through a name in it: a kernel that swapped `kernel-1` for a symlink
to a host socket and then dropped the connection had the grader's ZMQ reconnect to the
host's socket. Once the kernel has bound its sockets, the grader opens each one without
following links (O_PATH | O_NOFOLLOW), refuses anything but a socket, and connects (and
reconnects) through the descriptor's /proc/self/fd path: always that socket, whatever the
name becomes.
"""

import asyncio
import os
import stat

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import KernelManager
from traitlets import Any, DottedObjectName, Dict

CHANNELS = ("shell", "iopub", "stdin", "hb", "control")
SOCKET_POLL = 0.005   # seconds between looks for the kernel's sockets while it starts


class SandboxKernelManager(KernelManager):
    sandbox = Any(help="the Sandbox this kernel runs in")
    # nbclient waits for output and for the kernel's death on one event loop: a blocking
    # client's get_msg would hold that loop, and a sandbox that ends (its wall-clock
    # budget) would never be noticed.
    client_class = DottedObjectName("labkit.grading.sandbox.kernel.SandboxKernelClient")
    sockets = Dict(help="channel -> O_PATH descriptor of the socket the kernel bound for it")

    def format_kernel_cmd(self, extra_arguments=None):
        return self.sandbox.launch_prefix() + super().format_kernel_cmd(extra_arguments)

    async def _async_pre_start_kernel(self, **kw):
        env = dict(kw.pop("env", None) or os.environ)
        env.update(self.sandbox.kernel_env())
        kw["env"] = env
        kw["cwd"] = str(self.sandbox.scratch)  # the submission's own directory, whatever was asked
        return await super()._async_pre_start_kernel(**kw)

    def write_connection_file(self, **kwargs):
        super().write_connection_file(**kwargs)
        self.sandbox.hand_over(self.connection_file)

    async def _async_post_start_kernel(self, **kw):
        if self.transport == "ipc":
            await self._hold_sockets()
        return await super()._async_post_start_kernel(**kw)

    async def _hold_sockets(self):
        """Wait for the kernel to bind its sockets, then hold each by descriptor."""
        waiting = {channel: f"{self.ip}-{getattr(self, channel + '_port')}" for channel in CHANNELS}
        while waiting:
            for channel, path in list(waiting.items()):
                descriptor = hold_socket(path)
                if descriptor is not None:
                    self.sockets[channel] = descriptor
                    del waiting[channel]
            if not waiting:
                break
            if await self.provisioner.poll() is not None:
                self.let_go_of_sockets()
                raise RuntimeError("the kernel died before it opened its sockets "
                                   f"(its log: {self.sandbox.directory}/kernel/kernel.log)")
            await asyncio.sleep(SOCKET_POLL)

    def _make_url(self, channel):
        if self.transport != "ipc":
            return super()._make_url(channel)
        if channel not in self.sockets:
            raise RuntimeError(f"the kernel's {channel} socket is not held yet: connect after start_kernel()")
        return held_socket_url(self.sockets[channel])

    async def _async_cleanup_resources(self, restart=False):
        try:
            return await super()._async_cleanup_resources(restart=restart)
        finally:
            self.let_go_of_sockets()

    def let_go_of_sockets(self):
        for descriptor in self.sockets.values():
            os.close(descriptor)
        self.sockets.clear()


class SandboxKernelClient(AsyncKernelClient):
    """Connects through its manager's held sockets (never a name the kernel can change)."""

    def _make_url(self, channel):
        if isinstance(self.parent, SandboxKernelManager):
            return self.parent._make_url(channel)
        return super()._make_url(channel)


def hold_socket(path):
    """An O_PATH descriptor of the socket at `path`; None while there is nothing there.
    Anything else there (a symlink, a FIFO, a file) is refused: the kernel put it there."""
    try:
        descriptor = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise RuntimeError(f"the kernel's sandbox put something other than a socket at {path}: refused to connect")
    return descriptor


def kernel_manager(sandbox, kernel_name="labkit", **settings) -> SandboxKernelManager:
    connection = sandbox.connection_settings()
    return SandboxKernelManager(kernel_name=kernel_name, sandbox=sandbox, **connection, **settings)


def held_socket_url(descriptor) -> str:
    """A ZMQ address of the socket held by `descriptor`: the kernel resolves the magic link
    to that very socket, on the first connect and on every reconnect."""
    return f"ipc:///proc/self/fd/{descriptor}"
