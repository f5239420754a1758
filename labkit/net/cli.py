"""`labkit network ls` and `labkit network inspect [NAME]` (Docker's spellings)."""

import json

from labkit.verbs import Verb, add_verbs, option


def cmd_ls(options):
    from labkit.net import networks

    print(f"{'NAME':8} {'DRIVER':7} {'BRIDGE':8} {'SUBNET':18} {'CONTAINERS':10} DESCRIPTION")
    for row in networks():
        print(f"{row['name']:8} {row['driver']:7} {row['bridge'] or '-':8} {row['subnet'] or '-':18} "
              f"{row['containers']:<10} {row['description']}")
    return 0


def cmd_inspect(options):
    from labkit.net import inspect

    print(json.dumps(inspect(options.name), indent=2))
    return 0


VERBS = (
    Verb("network", "list and inspect container networks", verbs=(
        Verb("ls", "the networks a container can use", cmd_ls),
        Verb("inspect", "subnet, gateway, bridge and containers of a network", cmd_inspect, (
            option("name", nargs="?", default="bridge", help="bridge (default), host, none, or the bridge's name"),
        )),
    )),
)


def add_subcommands(subparsers):
    add_verbs(subparsers, VERBS)
