"""What `--net bridge` costs, measured in one run and printed as ratios (nothing asserted).

    python benchmarks/network.py [--runs 100] [--megabytes 512]

Start-up: median of Container.run() of /bin/true (start, exit, teardown) with
- none:         own network namespace with lo only (the default)
- bridge:       + an IPAM lease, a veth pair into the bridge, eth0 set up inside; a
                long-lived container keeps the bridge up, as in a lab with a server
- bridge, cold: the bridge itself is made and removed each time (first and last user)

TCP throughput (one stream, 1 MiB writes, median of several rounds): the same small
Python sink and source in every case, so that only the path differs. The container
images hold no Python; instead a host process joins a container's network namespace
(setns), which is all a socket's path depends on:
- host loopback:                    127.0.0.1 → 127.0.0.1 on the host
- container → container (bridge):   B's netns → veth → bridge → veth → A's netns
- host 127.0.0.1 → published port:  through labkit's userspace port proxy into A
"""

import argparse
import os
import socket
import statistics
import sys

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SINK_PORT = 5201


def timed(function, runs, warmup=3):
    return statistics.median(timing.samples(function, runs, warmup)) * 1000


# --- TCP throughput: the network experiment's own sink and source ------------------------

def throughput(sink_netns, source_netns, address, port, megabytes, rounds, sink_port=SINK_PORT) -> float:
    """MB/s (median of `rounds`) from a source in one netns to a sink in another (None:
    the host's), with labkit.experiments.network's two ends."""
    from labkit.experiments.network import Sink, send_from

    with Sink(sink_netns, sink_port):
        seconds = [send_from(source_netns, address, megabytes, port) for _ in range(rounds)]
    return (megabytes << 20) / statistics.median(seconds) / 1e6


# --- the benchmark --------------------------------------------------------------------------

def startup_rows(runs):
    from labkit.runtime import Container, ContainerSpec

    def once(network):
        return lambda: Container(ContainerSpec(command=["/bin/true"], network=network)).run().check()

    rows = {"none": timed(once("none"), runs),
            "bridge, cold (bridge made and removed)": timed(once("bridge"), max(10, runs // 5))}
    keeper = Container(ContainerSpec(command="sleep 3600", network="bridge")).start(detach=True)
    try:
        rows["bridge"] = timed(once("bridge"), runs)
    finally:
        keeper.remove()
    return rows


def throughput_rows(megabytes, rounds):
    from labkit.runtime import Container, ContainerSpec

    host_port = free_port()
    server = Container(ContainerSpec(command="sleep 3600", network="bridge", publish=[f"{host_port}:{SINK_PORT}"]))
    client = Container(ContainerSpec(command="sleep 3600", network="bridge"))
    server.start(detach=True)
    client.start(detach=True)
    try:
        return {
            "host loopback": throughput(None, None, "127.0.0.1", SINK_PORT + 1, megabytes, rounds, SINK_PORT + 1),
            "container → container (bridge)": throughput(server.netns, client.netns, server.ip, SINK_PORT, megabytes,
                                                         rounds),
            "host 127.0.0.1 → published port (proxy)": throughput(server.netns, None, "127.0.0.1", host_port,
                                                                   megabytes, rounds),
        }
    finally:
        server.remove()
        client.remove()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()

    startup = startup_rows(options.runs)
    none = startup["none"]
    print(f"{'start-up (run /bin/true)':40} {'median ms':>10} {'÷ none':>8} {'added ms':>9}")
    for name, value in startup.items():
        print(f"{name:40} {value:10.2f} {value / none:8.2f} {value - none:9.2f}")

    speeds = throughput_rows(options.megabytes, options.rounds)
    loopback = speeds["host loopback"]
    print(f"\n{'TCP throughput (' + str(options.megabytes) + ' MiB, one stream)':40} {'MB/s':>10} {'÷ loopback':>11}")
    for name, value in speeds.items():
        print(f"{name:40} {value:10.0f} {value / loopback:11.2f}")


if __name__ == "__main__":
    main()
