"""A sandbox per submission: the student's kernel runs where it cannot reach the grader,
the host or the next submission.

    from labkit.grading.sandbox import Sandbox, SandboxLimits

    with Sandbox(kind="namespaces", limits=SandboxLimits(memory="2g", pids=512, cpus=1.0,
                                                        wall_seconds=600)) as box:
        km = box.kernel_manager(kernel_name="labkit")
        ...                      # the grader reads box.pids(), box.cgroup_paths, box.in_netns(...)

Kinds: "namespaces" (default; a user namespace and every other kind, a delegated cgroup
subtree with limits the student cannot raise: labkit's own containers work inside it),
"none" (the kernel runs on the host, as before sandboxes: no isolation). `--sandbox vm`
is not a kind of this factory: it grades the whole submission in a VM, with a namespaces
sandbox inside (labkit/grading/vm.py). What each defends against is in docs/labs.md.
"""

from labkit.errors import ConfigError
from labkit.grading.sandbox.limits import SandboxLimits

KINDS = ("namespaces", "vm", "none")

__all__ = ["KINDS", "Sandbox", "SandboxLimits"]


def Sandbox(kind="namespaces", limits=None, workdir=None):  # noqa: N802 — used as a class by callers
    """A sandbox of `kind`, made on entering the with-block and gone on leaving it."""
    if kind == "none":
        from labkit.grading.sandbox.host import HostSandbox

        return HostSandbox(limits, workdir)
    if kind == "namespaces":
        from labkit.grading.sandbox.namespaces import NamespaceSandbox

        return NamespaceSandbox(limits, workdir)
    if kind == "vm":
        raise ConfigError("a VM is not a sandbox the grader reads from outside: --sandbox vm grades the whole "
                          "submission in a guest of its own (labkit.grading.vm), with this namespaces sandbox "
                          "inside it")
    raise ConfigError(f"sandbox kind {kind!r} is not one of {', '.join(KINDS)}")
