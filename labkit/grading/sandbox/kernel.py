"""The submission's Jupyter kernel, started through its sandbox.

A jupyter_client KernelManager whose launch command is prefixed by the sandbox's way in
(nothing for kind="none"), with the sandbox's environment and working directory. With
the kernel in its own network namespace, TCP on 127.0.0.1 would be the kernel's own
loopback, which the grader cannot reach: the kernel talks ZMQ over Unix sockets
(`ipc` transport) in a directory both sides see at the same path.
"""

import os

from jupyter_client.manager import KernelManager
from traitlets import Any, DottedObjectName


class SandboxKernelManager(KernelManager):
    sandbox = Any(help="the Sandbox this kernel runs in")
    # nbclient waits for output and for the kernel's death on one event loop: a blocking
    # client's get_msg would hold that loop, and a sandbox that ends (its wall-clock
    # budget) would never be noticed.
    client_class = DottedObjectName("jupyter_client.asynchronous.AsyncKernelClient")

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


def kernel_manager(sandbox, kernel_name="labkit", **settings) -> SandboxKernelManager:
    connection = sandbox.connection_settings()
    return SandboxKernelManager(kernel_name=kernel_name, sandbox=sandbox, **connection, **settings)
