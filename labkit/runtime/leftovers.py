"""What dead owners left behind, gathered in one place: their containers and cgroups
(runtime/state.py) and their network leases and bridge (labkit.net). Run before each
helper starts and by `labkit gc`."""

from labkit import net
from labkit.runtime import state


def sweep(home=None) -> list:
    """Remove what owners that are gone left; returns what was removed, for `labkit gc`."""
    return state.sweep(home) + net.sweep(home)
