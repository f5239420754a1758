"""A container's network, asked of labkit.net with plain values: its part of the plan
(`prepare_network`), the veth moved in once PID 1 exists (`attach_network`), all of it
given back at the end (`detach_network`).

Runs in the caller, which owns what the network takes (an address lease, a veth pair,
published ports): the helper never imports labkit.net's netlink side. With --net none
or host there is nothing to ask (`NetworkMode.managed`).
"""

import os

from labkit.errors import ConfigError
from labkit.linux.rootless import running_rootless
from labkit.runtime.client.registry import running_containers


def prepare_network(container, hosts_text):
    """The network's part of the plan (None with --net none/host); sets container.network."""
    if not container.spec.network.managed:
        return None
    from labkit.net import hooks

    who = hooks.Who(id=container.id, name=container.name, hostname=container.hostname,
                    hosts_file=str(container.files.hosts_file))
    peer = None
    if container.spec.network.peer:
        peer = _network_peer(container.spec.network.peer)
    if container.spec.network.is_bridge and running_rootless():
        from labkit.runtime.client.helper_client import get_helper

        get_helper()   # rootless, the helper starts the keeper of the bridge's namespace (net/rootless_bridge.py)
    container.network, setup = hooks.prepare(container.spec, who, hosts_text, peer)
    return setup


def attach_network(container):
    if not container.spec.network.managed:
        return
    from labkit.net import hooks

    hooks.attach(container.network, container.pid, container.name)


def detach_network(container):
    if not container.spec.network.managed:
        return
    from labkit.net import hooks

    hooks.detach(container.network, container.id)


def _network_peer(name):
    """The running container whose network `--net container:NAME` shares."""
    from labkit.net import hooks, hosts

    running = running_containers()
    target = running.get(name)
    if target is None or target.state != "running" or target.result is not None or not target.pid \
            or not os.path.exists(target.netns):
        names = ", ".join(sorted(running)) or "none"
        raise ConfigError(f"cannot join the network of {name!r}: no running container by that name in this "
                          f"session (running: {names}); start it with detach=True first")
    if target.spec.network.is_host:
        raise ConfigError(f"container {name!r} uses the host's network; use --net host instead of container:{name}")
    hosts_text = hosts.read(target.files.hosts_file)   # None: too large (filled from inside) or gone
    return hooks.Peer(name=name, netns=target.netns, network=target.network, hosts_text=hosts_text)
