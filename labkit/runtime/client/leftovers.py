"""What dead owners left behind, gathered in one place: their containers and cgroups
(runtime/client/state.py) and their network leases and bridge (labkit.net).

Runs in the caller, before it starts its helper and in `labkit gc`."""

from labkit import net
from labkit.runtime.client import state


def sweep(home=None) -> list:
    """Remove what owners that are gone left; returns what was removed, for `labkit gc`."""
    return state.sweep(home) + net.sweep(home)
