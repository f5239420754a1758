"""`labkit network ls` and `labkit network inspect [NAME]` (Docker's spellings)."""

import json


def add_subcommands(subparsers):
    network = subparsers.add_parser("network", help="list and inspect container networks")
    verbs = network.add_subparsers(dest="network_verb", metavar="VERB")
    verbs.required = True
    verbs.add_parser("ls", help="the networks a container can use").set_defaults(func=cmd_ls)
    inspect = verbs.add_parser("inspect", help="subnet, gateway, bridge and containers of a network")
    inspect.add_argument("name", nargs="?", default="bridge", help="bridge (default), host, none, or the bridge's name")
    inspect.set_defaults(func=cmd_inspect)


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
