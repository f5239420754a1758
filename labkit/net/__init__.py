"""Container networking with pyroute2 (netlink; no shelling out to `ip`).

    --net none            own network namespace with only `lo` (the default)
    --net host            the host's network namespace
    --net bridge          eth0 on a veth pair plugged into the `labkit0` bridge, an address
                          from a small IPAM, a default route via the bridge, peers by name
    --net container:NAME  share NAME's network namespace (as in a Kubernetes pod)
    -p HOST:CONTAINER     reach a container's TCP port at 127.0.0.1:HOST

Modules: `bridge` (the switch), `veth` (the cables), `ipam` (addresses and leases),
`hosts` (names), `ports` (the proxy), `inside` (eth0 set up from inside), `hooks` (what
the runtime calls), `leftovers` (the sweep), `rtnl` (the one door to netlink), `report`
and `cli` (`labkit network ls|inspect`). pyroute2 is imported only when a container
asks for a network.
"""


def sweep(home=None) -> list:
    """Remove what dead owners left (leases, a bridge nobody uses). For `labkit gc`."""
    from labkit.net.leftovers import sweep_home

    return sweep_home(home)


def networks(home=None) -> list:
    """The networks a container can use, as rows for `labkit network ls`."""
    from labkit.net.report import network_rows

    return network_rows(home)


def inspect(name="bridge", home=None) -> dict:
    """The bridge network: subnet, gateway, bridge, and every container on it."""
    from labkit.net.report import inspect_network

    return inspect_network(name, home)


def bridge_namespace(home=None) -> str | None:
    """The network namespace the bridge is in, as a /proc path: None for the host's (as
    root) or, without root, while no container is on the bridge (its namespace is made
    with the first: labkit/net/rootless_bridge.py)."""
    from labkit.home import labkit_home
    from labkit.linux.rootless import running_rootless

    if not running_rootless():
        return None
    from labkit.net.rootless_bridge import request

    pid = request(home or labkit_home(), "netns")["pid"]
    return f"/proc/{pid}/ns/net" if pid else None
