"""Two containers on labkit's bridge (veth pair → bridge → veth pair) against loopback
inside one container: round-trip time (ping) and throughput (dd | nc). Traffic goes only
between the containers this experiment makes, or over their own loopback.

Needs labkit.net's bridge; where it cannot be made the experiment is skipped with the
reason.
"""

import re
from dataclasses import dataclass

from labkit.errors import LabkitError
from labkit.experiments.base import Check, finished, median, new_result, report, running

PORT = 5000
# nc -ll keeps listening; -e hands each connection to a reader that throws it away.
SERVER = ["nc", "-ll", "-p", str(PORT), "-e", "dd", "of=/dev/null"]


@dataclass
class Params:
    pings: int = 50             # per path and trial
    megabytes: int = 64         # sent per path and trial
    trials: int = 3


def run(params: Params, progress=None):
    result = new_result("network", params)
    try:
        with running(network="bridge", command=SERVER) as server, \
             running(network="bridge", command=["sleep", "600"]) as client:
            # loopback: the client pings its own lo, the server sends to its own listener;
            # bridge: the client pings and sends to the server's address.
            paths = {"loopback": (client, server, "127.0.0.1"), "bridge": (client, client, str(server.ip))}
            rows = []
            for trial in range(1, params.trials + 1):
                for path, (pinger, sender, address) in paths.items():
                    seconds = _send(sender, address, params.megabytes)
                    rows.append({"trial": trial, "path": path, "rtt_ms": _ping(pinger, address, params.pings),
                                 "send_seconds": seconds,
                                 "mbytes_per_s": params.megabytes / seconds if seconds else None})
                report(progress, trial, params.trials, "ping and dd | nc, bridge and loopback")
            result.data = {"rows": rows, "server_ip": str(server.ip)}
    except LabkitError as error:
        result.skipped = f"the bridge network is not available here: {error}"
    return finished(result)


def _ping(container, address, count) -> list:
    output = container.exec(["ping", "-c", str(count), "-i", "0.01", address]).check().stdout
    return [float(value) for value in re.findall(r"time=([\d.]+) ms", output)]


def _send(container, address, megabytes) -> float | None:
    """Seconds to push `megabytes` MiB into a connection (busybox `time`: 10 ms steps)."""
    pipeline = f"dd if=/dev/zero bs=1M count={megabytes} 2>/dev/null | nc {address} {PORT}"
    outcome = container.exec(["time", "sh", "-c", pipeline]).check()
    match = re.search(r"real\s+(\d+)m\s*([\d.]+)s", outcome.stderr)
    return int(match[1]) * 60 + float(match[2]) if match else None


def by_path(result) -> dict:
    rows = result.data["rows"]
    return {path: {"rtt_ms": median([v for r in rows if r["path"] == path for v in r["rtt_ms"]]),
                   "mbytes_per_s": median([r["mbytes_per_s"] for r in rows if r["path"] == path and r["mbytes_per_s"]])}
            for path in ("loopback", "bridge")}


def check(result) -> Check:
    # A ping's round trip over either path is mostly waking ping up on each side: the
    # bridge's extra hops are a few µs, inside the noise (the figure shows both). The
    # throughput of one TCP stream shows the extra work plainly, so the claim is on that.
    claim = "a TCP stream over the bridge (veth, bridge, veth) carries less data per second than over loopback"
    if result.skipped:
        return Check.skip(claim, result.skipped)
    numbers = by_path(result)
    loop, bridge = numbers["loopback"], numbers["bridge"]
    detail = (f"throughput loopback {loop['mbytes_per_s']:.0f} MiB/s, bridge {bridge['mbytes_per_s']:.0f} MiB/s; "
              f"median RTT loopback {loop['rtt_ms'] * 1e3:.0f} µs, bridge {bridge['rtt_ms'] * 1e3:.0f} µs")
    return Check(claim, bridge["mbytes_per_s"] < loop["mbytes_per_s"], detail)


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
        if r["mbytes_per_s"]:
            throughput.plot(paths.index(r["path"]), r["mbytes_per_s"], "o", color="black", alpha=0.5)
    throughput.set_ylabel("MiB/s (median of trials)")
    throughput.set_title("dd | nc, one TCP connection")
    figure.tight_layout()
    return figure
