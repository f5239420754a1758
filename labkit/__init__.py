"""labkit: learn, test and measure how Linux containers work, on the real kernel.

A container is an ordinary host process: namespaces decide what it sees, cgroups how
much it may use, and an overlay filesystem gives it its own root.
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """`%load_ext labkit` (and the labkit kernel) registers the magics."""
    from labkit.magics import register

    register(ipython)
    _say_where_once(ipython)


def unload_ipython_extension(ipython):
    from labkit.magics import unregister

    unregister(ipython)


def _say_where_once(ipython):
    """In the VM kernel (labkit.vm.provisioner sets LABKIT_VM_KERNEL), the first cell
    says that it runs in a VM and what its boot cost: that is not hidden."""
    import os
    import sys

    booted = os.environ.get("LABKIT_VM_KERNEL")
    if not booted:
        return

    def say(*args):
        ipython.events.unregister("pre_run_cell", say)
        print(f"labkit: this kernel runs inside a VM on a cgroup v2 kernel ({booted})", file=sys.stderr)

    ipython.events.register("pre_run_cell", say)
