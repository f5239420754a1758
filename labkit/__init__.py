"""labkit: learn, test and measure how Linux containers work, on the real kernel.

A container is an ordinary host process: namespaces decide what it sees, cgroups how
much it may use, and an overlay filesystem gives it its own root.
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """`%load_ext labkit` (and the labkit kernel) registers the magics."""
    from labkit.magics import register

    register(ipython)


def unload_ipython_extension(ipython):
    from labkit.magics import unregister

    unregister(ipython)
