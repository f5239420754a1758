"""What `labkit network ls` and `labkit network inspect` show: the bookkeeping in
LABKIT_HOME/net/ checked against what the kernel really has."""

from labkit.errors import ConfigError
from labkit.home import labkit_home
from labkit.net import ipam

DESCRIPTIONS = {
    "none": "own network namespace, only the loopback interface (the default)",
    "host": "no network namespace: the host's interfaces, addresses and ports",
    "bridge": "eth0 on a veth pair into a bridge; an address from labkit's IPAM",
}


def network_rows(home=None) -> list:
    book = ipam.read_leases(home or labkit_home())
    rows = []
    for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
        row = {"name": name, "driver": driver, "bridge": "", "subnet": "", "containers": 0,
               "description": DESCRIPTIONS[name]}
        if name == "bridge" and book is not None and book.network:
            row.update(bridge=book.network.get("bridge") or "", subnet=book.network["subnet"],
                       containers=len(book.leases))
        rows.append(row)
    return rows


def inspect_network(name="bridge", home=None) -> dict:
    home = home or labkit_home()
    if name in ("none", "host"):
        return {"name": name, "driver": "null" if name == "none" else "host", "description": DESCRIPTIONS[name]}
    book = ipam.read_leases(home)
    if name != "bridge" and (book is None or not book.network or book.network.get("bridge") != name):
        raise ConfigError(f"no network named {name!r}; the networks are bridge, host and none")
    result = {"name": "bridge", "driver": "bridge", "description": DESCRIPTIONS["bridge"], "home": str(home),
              "bridge": None, "subnet": None, "gateway": None, "bridge_exists": False, "containers": []}
    if book is None or not book.network:
        return result
    from labkit.net import bridge, veth

    present = set(veth.host_ends())
    result.update(bridge=book.network.get("bridge"), subnet=book.network["subnet"], gateway=book.network["gateway"],
                  bridge_exists=bridge.find_bridge(home) is not None)
    from labkit.net.hooks import published_ports

    sessions_ports = published_ports()
    for ip, lease in sorted(book.leases.items(), key=lambda item: tuple(int(part) for part in item[0].split("."))):
        result["containers"].append({
            "name": lease.get("name"), "id": lease.get("container"), "ip": ip, "veth": lease.get("veth"),
            "veth_on_host": lease.get("veth") in present, "owner_pid": lease.get("owner_pid"),
            "owner_alive": ipam.owner_alive(lease), "ports": sessions_ports.get(lease.get("container"), []),
        })
    return result

