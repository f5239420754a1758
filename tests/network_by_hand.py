"""Lab 4's pair by hand, made one way (argv[1]) and judged by its five probes in the
calling kernel's world (the student's kernel: feedback, nothing owned). Run as a script in a
network namespace of its own (as root), or as root of a user namespace that owns none of the
host's (rootless); prints {probe: [passed, observed]} as JSON, or {"refused": step} when the
kernel refuses a step. The two processes are killed before it exits, and their namespaces
and the pair go with them."""

import json
import subprocess
import sys

from labkit.grading import probes

SUBNET = "192.168.44"
PROBES = ("two_network_namespaces", "veth_pair_between", "veth_addresses_in", "veths_up", "echo_between")


def in_own_netns(join=None):
    command = ["unshare", "--net"] if join is None else ["nsenter", "-t", str(join), "-n"]
    process = subprocess.Popen([*command, "sh", "-c", "echo ready && exec sleep 600"], stdout=subprocess.PIPE)
    process.stdout.readline()
    return process


def wiring(way, left, right) -> list:
    """The shell steps of one way; {left}/{right} are the two PIDs."""
    inside = "nsenter -t {left} -n "
    pair = inside + "ip link add hand0 type veth peer name hand1 netns {right}"
    hand0 = inside + f"sh -c 'ip addr add {SUBNET}.1/24 dev hand0 && ip link set hand0 up'"
    hand1 = "nsenter -t {right} -n " + f"sh -c 'ip addr add {SUBNET}.2/24 dev hand1 && ip link set hand1 up'"
    steps = {
        "right": [pair, hand0, hand1],
        "one-namespace": [inside + "ip link add hand0 type veth peer name hand1", hand0, hand1],
        "end-left-behind": ["ip link add hand0 type veth peer name hand1", "ip link set hand0 netns {left}", hand0,
                            f"sh -c 'ip addr add {SUBNET}.2/24 dev hand1 && ip link set hand1 up'"],
        "link-down": [pair, hand0, hand1.replace(" && ip link set hand1 up", "")],
        "other-subnet": [step.replace(SUBNET, "192.168.45") for step in (pair, hand0, hand1)],
    }[way]
    return [step.format(left=left, right=right) for step in steps]


def judge(left: int, right: int) -> dict:
    """{probe: [passed, observed]} of the lab's five probes on the two PIDs, in this world."""
    seen = {}
    for name in PROBES:
        args = (left, right, f"{SUBNET}.0/24") if name == "veth_addresses_in" else (left, right)
        observation = getattr(probes, name)(*args)()
        seen[name] = [observation.passed, observation.observed]
    return seen


def main(way) -> dict:
    left = in_own_netns()
    right = in_own_netns(join=left.pid if way == "one-namespace" else None)
    try:
        for step in wiring(way, left.pid, right.pid):
            done = subprocess.run(step, shell=True, capture_output=True, text=True)
            if done.returncode != 0:
                return {"refused": step.split(" -n ")[-1], "error": done.stderr.strip()}
        return judge(left.pid, right.pid)
    finally:
        for process in (left, right):
            process.kill()
            process.wait()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
