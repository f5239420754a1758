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
import subprocess
import sys
import time

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHUNK = 1 << 20
SINK_PORT = 5201


def timed(function, runs, warmup=3):
    return statistics.median(timing.samples(function, runs, warmup)) * 1000


# --- the TCP sink and source (run as `--tcp sink|source`, optionally inside a netns) --------

def enter_netns(path):
    if path:
        from labkit.linux import syscalls
        from labkit.linux.namespaces import BY_NAME

        with open(path) as handle:
            syscalls.setns(handle.fileno(), BY_NAME["net"].flag)


def sink(port, total, rounds):
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen()
        print("ready", flush=True)
        buffer = bytearray(CHUNK)
        for _ in range(rounds):
            connection, _ = listener.accept()
            with connection:
                received = 0
                while received < total:
                    count = connection.recv_into(buffer)
                    if not count:
                        break
                    received += count
                connection.sendall(b"k")  # the source's clock stops when all of it arrived


def source(address, port, total, rounds):
    payload = bytes(CHUNK)
    for _ in range(rounds):
        with socket.create_connection((address, port), timeout=30) as connection:
            started = time.perf_counter()
            sent = 0
            while sent < total:
                connection.sendall(payload)
                sent += CHUNK
            connection.recv(1)
            print(f"{time.perf_counter() - started:.6f}", flush=True)


def tcp_main(options):
    enter_netns(options.netns)
    if options.tcp == "sink":
        sink(options.port, options.bytes, options.rounds)
    else:
        source(options.address, options.port, options.bytes, options.rounds)


def throughput(sink_netns, source_netns, address, port, total, rounds, sink_port=SINK_PORT) -> float:
    """MB/s (median of `rounds`) from a source in one netns to a sink in another."""
    def command(*arguments):
        return [sys.executable, __file__, "--bytes", str(total), "--rounds", str(rounds), *arguments]

    receiver = subprocess.Popen(command("--tcp", "sink", "--port", str(sink_port), "--netns", sink_netns or ""),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        sender = subprocess.run(command("--tcp", "source", "--address", address, "--port", str(port),
                                        "--netns", source_netns or ""), capture_output=True, text=True,
                                timeout=600, check=True)
        seconds = [float(line) for line in sender.stdout.split()]
    finally:
        receiver.wait(timeout=30)
    return total / statistics.median(seconds) / 1e6


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

    total = megabytes << 20
    host_port = free_port()
    server = Container(ContainerSpec(command="sleep 3600", network="bridge", publish=[f"{host_port}:{SINK_PORT}"]))
    client = Container(ContainerSpec(command="sleep 3600", network="bridge"))
    server.start(detach=True)
    client.start(detach=True)
    try:
        return {
            "host loopback": throughput(None, None, "127.0.0.1", SINK_PORT + 1, total, rounds, SINK_PORT + 1),
            "container → container (bridge)": throughput(server.netns, client.netns, server.ip, SINK_PORT, total,
                                                         rounds),
            "host 127.0.0.1 → published port (proxy)": throughput(server.netns, None, "127.0.0.1", host_port,
                                                                   total, rounds),
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
    parser.add_argument("--tcp", choices=("sink", "source"))
    parser.add_argument("--netns")
    parser.add_argument("--address")
    parser.add_argument("--port", type=int)
    parser.add_argument("--bytes", type=int)
    options = parser.parse_args()
    if options.tcp:
        tcp_main(options)
        return

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
