"""Two containers on labkit's bridge (veth pair → bridge → veth pair) against loopback
inside one container: round-trip time (ping) and the throughput of one TCP stream.
Traffic goes only between the containers this experiment makes, or over their own
loopback.

The stream is measured with the same small Python sink and source on both paths, run
as host processes that join a container's network namespace (setns), which is all a
socket's path depends on: so what is measured is the path, not the tool (busybox `nc`
tops out far below what the bridge carries). The sink acknowledges once every byte has
arrived, so a stream that loses bytes never counts as fast.

Only what the host lacks is a skip (no bridge can be made here: HostError). A ping that
goes unanswered or a stream that fails inside the containers is a miss or an error,
never a skip.

    python -m labkit.experiments.network sink|source …   (the two ends; used by run())
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from labkit.errors import HostError
from labkit.experiments.base import Check, finished, median, new_result, report, running

PORT = 5201
CHUNK = 1 << 20
# The bridge adds two veth hops and a bridge lookup to every packet: real work, but the
# same class of speed as loopback (both are memory copies in one kernel). Slower than a
# quarter of loopback is a broken or mis-measured path, not the cost of a bridge.
SLOWEST_SHARE = 0.25


@dataclass
class Params:
    pings: int = 50             # per path and trial
    megabytes: int = 256        # sent per path and trial
    trials: int = 3


def run(params: Params, progress=None):
    result = new_result("network", params)
    try:
        server_container = running(network="bridge", command=["sleep", "600"])
        client_container = running(network="bridge", command=["sleep", "600"])
        with server_container as server, client_container as client:
            result.data = _measure(server, client, params, progress)
    except HostError as error:
        result.skipped = f"the bridge network is not available here: {error}"
    return finished(result)


def _measure(server, client, params, progress) -> dict:
    # loopback: source and sink both in the server's namespace, to 127.0.0.1;
    # bridge: the source in the client's namespace, to the server's bridge address.
    paths = {"loopback": (server, "127.0.0.1"), "bridge": (client, str(server.ip))}
    rows = []
    with Sink(server.netns) as sink:
        for trial in range(1, params.trials + 1):
            for path, (sender, address) in paths.items():
                sent, answered = _ping(sender, address, params.pings)
                seconds = send_from(sender.netns, address, params.megabytes)
                sink.check_alive()
                rows.append({"trial": trial, "path": path, "rtt_ms": answered, "pings_sent": sent,
                             "send_seconds": seconds, "mbytes_per_s": params.megabytes / seconds})
            report(progress, trial, params.trials, "ping and a TCP stream, bridge and loopback")
    return {"rows": rows, "server_ip": str(server.ip)}


def _ping(container, address, count) -> tuple:
    """(pings sent, round-trip times of those answered). busybox ping exits 1 when some
    went unanswered: that is data for the check, not an error."""
    outcome = container.exec(["ping", "-c", str(count), "-i", "0.01", "-W", "2", address])
    if outcome.exit_code not in (0, 1):
        outcome.check()
    return count, [float(value) for value in re.findall(r"time=([\d.]+) ms", outcome.stdout)]


class Sink:
    """The receiving end, a host process listening on `port` until stopped: inside the
    network namespace `netns` (a path such as /proc/PID/ns/net), or the host's own (None).
    benchmarks/network.py uses the same two ends."""

    def __init__(self, netns=None, port=PORT):
        self.netns = netns
        self.port = port
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-m", __name__, "sink", "--netns", self.netns or "",
                                         "--port", str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"the TCP sink did not start: {self.process.communicate()[1][-500:]}")
        return self

    def check_alive(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"the TCP sink died: {self.process.stderr.read()[-500:]}")

    def __exit__(self, *exc):
        self.process.kill()
        self.process.communicate()


def send_from(netns, address, megabytes, port=PORT) -> float:
    """Seconds until `megabytes` MiB sent from `netns` (None: the host's) to a Sink at
    address:port had all arrived there."""
    source = subprocess.run([sys.executable, "-m", __name__, "source", "--netns", netns or "", "--address", address,
                             "--port", str(port), "--megabytes", str(megabytes)],
                            capture_output=True, text=True, timeout=300)
    if source.returncode != 0:
        raise RuntimeError(f"the TCP stream to {address}:{port} failed: {source.stderr.strip()[-500:]}")
    return float(source.stdout)


def by_path(result) -> dict:
    rows = result.data["rows"]
    return {path: {"rtt_ms": median([v for r in rows if r["path"] == path for v in r["rtt_ms"]]),
                   "mbytes_per_s": median([r["mbytes_per_s"] for r in rows if r["path"] == path]),
                   "lost": sum(r["pings_sent"] - len(r["rtt_ms"]) for r in rows if r["path"] == path)}
            for path in ("loopback", "bridge")}


def check(result) -> Check:
    claim = ("containers on the bridge reach each other (every ping answered), and a TCP stream through "
             f"veth, bridge and veth runs at loopback's order of speed (at least {SLOWEST_SHARE:.0%} of it)")
    if result.skipped:
        return Check.skip(claim, result.skipped)
    numbers = by_path(result)
    loop, bridge = numbers["loopback"], numbers["bridge"]
    misses = [f"{numbers[path]['lost']} pings over {path} went unanswered" for path in numbers if numbers[path]["lost"]]
    share = bridge["mbytes_per_s"] / loop["mbytes_per_s"]
    if share < SLOWEST_SHARE:
        misses.append(f"the bridge carried only {share:.1%} of loopback's rate")
    detail = (f"throughput loopback {loop['mbytes_per_s']:.0f} MiB/s, bridge {bridge['mbytes_per_s']:.0f} MiB/s "
              f"({share:.0%}); median RTT loopback {loop['rtt_ms'] * 1e3:.0f} µs, bridge {bridge['rtt_ms'] * 1e3:.0f} µs")
    return Check.judge(claim, misses, [], detail)


def plot(result):
    import matplotlib.pyplot as plt

    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    if result.skipped:
        for axes in (latency, throughput):
            axes.axis("off")
        figure.suptitle(f"skipped: {result.skipped[:100]}", fontsize=9)
        return figure
    rows, paths = result.data["rows"], ("loopback", "bridge")
    latency.boxplot([[v * 1e3 for r in rows if r["path"] == p for v in r["rtt_ms"]] for p in paths])
    latency.set_xticks([1, 2], paths)
    latency.set_ylabel("round-trip time (µs)")
    latency.set_title("ping")
    numbers = by_path(result)
    bars = throughput.bar(paths, [numbers[p]["mbytes_per_s"] for p in paths], color=["#bbbbbb", "#2b8cbe"])
    throughput.bar_label(bars, fmt="%.0f MiB/s", fontsize=8)
    for r in rows:
        throughput.plot(paths.index(r["path"]), r["mbytes_per_s"], "o", color="black", alpha=0.5)
    throughput.set_ylabel("MiB/s (median of trials)")
    throughput.set_title("one TCP stream, host-side Python sink and source")
    figure.tight_layout()
    return figure


# --- the two ends, each a small host process inside a container's network namespace ---

def enter_netns(path):
    if not path:
        return  # the host's own
    from labkit.linux import syscalls
    from labkit.linux.namespaces import BY_NAME

    with open(path) as handle:
        syscalls.setns(handle.fileno(), BY_NAME["net"].flag)


def serve(port=PORT):
    import socket

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen()
        print("ready", flush=True)
        buffer = bytearray(CHUNK)
        while True:
            connection, _ = listener.accept()
            with connection:
                expected = int.from_bytes(connection.recv(8), "big")
                received = 0
                while received < expected:
                    count = connection.recv_into(buffer)
                    if not count:
                        break
                    received += count
                connection.sendall(b"k" if received == expected else b"!")


def send(address, megabytes, port=PORT) -> float:
    import socket

    payload, total = bytes(CHUNK), megabytes * CHUNK
    with socket.create_connection((address, port), timeout=30) as connection:
        started = time.perf_counter()
        connection.sendall(total.to_bytes(8, "big"))
        for _ in range(megabytes):
            connection.sendall(payload)
        if connection.recv(1) != b"k":
            raise SystemExit(f"the sink did not receive all {total} bytes")
        return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labkit.experiments.network", allow_abbrev=False)
    parser.add_argument("end", choices=("sink", "source"))
    parser.add_argument("--netns", default="", help="a network namespace to join (default: the host's)")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--address")
    parser.add_argument("--megabytes", type=int)
    options = parser.parse_args(argv)
    # Killed with whoever started it: a sink left behind would keep the namespace alive.
    from labkit.linux import syscalls

    parent = os.getppid()
    syscalls.prctl_set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        raise SystemExit("the experiment that started this end is gone")
    enter_netns(options.netns)
    if options.end == "sink":
        serve(options.port)
    else:
        print(f"{send(options.address, options.megabytes, options.port):.6f}")


if __name__ == "__main__":
    main()
