"""What a killed owner left on the network side, and its removal (`labkit gc`).

When an owner dies its helper kills its containers, their network namespaces die and
the kernel deletes their veth pairs; published-port relays were threads of the owner
and die with it. What stays is bookkeeping and the bridge: leases held by dead owners,
a host veth end that was never moved into a namespace, the bridge once no live
lease needs it, and the directory of a pasta's PID file when the owner died while pasta started.
"""

import socket

from labkit.home import labkit_home
from labkit.net import bridge_names, ipam, pasta_dirs


def sweep_home(home=None) -> list:
    """Runs before every helper starts (`labkit run` included): where nothing is left to
    remove, it answers without netlink, since importing pyroute2 alone costs ~90 ms."""
    home = home or labkit_home()
    removed = pasta_dirs.sweep(home)
    book = ipam.read_leases(home)
    if book is None or _nothing_left(book):
        return removed
    from labkit.net import bridge
    from labkit.net.hooks import drop_dead_leases, remove_bridge_if_unused

    removed += [f"bridge {name} (its LABKIT_HOME is gone)" for name in bridge.orphaned_bridges()
                if bridge.remove_bridge(name)]
    with ipam.lease_book(home) as book:
        for ip, lease in drop_dead_leases(book):
            removed.append(f"address {ip} of container {lease.get('name', '?')} (owner {lease.get('owner_pid')} is gone)")
        name = remove_bridge_if_unused(book, home)
        if name:
            removed.append(f"bridge {name}")
        book.save()
    return removed


def _nothing_left(book) -> bool:
    """No lease of a dead owner, no bridge recorded after its last user left, and no link in
    this network namespace named as labkit's bridges are (a bridge of any home, a deleted
    one's included, is one). The names come from `if_nameindex(3)`, one netlink dump in C."""
    if book.network is not None and not book.leases:
        return False
    if not all(ipam.owner_alive(lease) for lease in book.leases.values()):
        return False
    try:
        links = socket.if_nameindex()
    except OSError:
        return False   # cannot tell: the way through netlink, as before this shortcut
    return not any(name.startswith(bridge_names.PREFIX) for _index, name in links)
