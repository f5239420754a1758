"""What a killed owner left on the network side, and its removal (`labkit gc`).

When an owner dies its helper kills its containers, their network namespaces die and
the kernel deletes their veth pairs; published-port relays were threads of the owner
and die with it. What stays is bookkeeping and the bridge: leases held by dead owners,
a host veth end that was never moved into a namespace, the bridge once no live
lease needs it, and the directory of a pasta's PID file when the owner died while pasta started.
"""

from labkit.home import labkit_home
from labkit.net import ipam, pasta_dirs


def sweep_home(home=None) -> list:
    home = home or labkit_home()
    removed = pasta_dirs.sweep(home)
    if ipam.read_leases(home) is None:
        return removed   # this home never used a bridge: no need to load netlink (run before every helper starts)
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
