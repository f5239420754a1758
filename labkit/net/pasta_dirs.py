"""Where a starting pasta writes its PID file: a directory of LABKIT_HOME/net named after
the owner (PID and start time), `net/pasta-PID-START-XXXX`. The owner removes it once pasta
has started (labkit/net/hooks.py); an owner killed in between leaves it, and the sweep
(`labkit gc`, every helper start) removes it once that owner is gone. In a shared /tmp it
would stay for good. A module of its own: the sweep, run before every helper starts, need
not load labkit/net/pasta.py."""

import os
import shutil

from labkit.home import labkit_home
from labkit.linux import processes
from labkit.net import ipam

PREFIX = "pasta-"


def new_dir(home=None) -> str:
    """A new empty directory for one pasta's PID file, named after this process."""
    import tempfile   # here: the sweep, on every `labkit run`'s path, needs none of it (random, its seeding)

    directory = ipam.net_dir(home or labkit_home())
    directory.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{me}-{processes.start_time(me)}-", dir=directory)


def sweep(home=None) -> list:
    """Remove the directories of owners that are gone; returns what was removed."""
    directory = ipam.net_dir(home or labkit_home())
    removed = []
    for name in sorted(os.listdir(directory)) if directory.is_dir() else []:
        owner = name[len(PREFIX):].split("-")[:2]
        if not name.startswith(PREFIX) or len(owner) < 2 or not all(part.isdigit() for part in owner):
            continue
        if not processes.is_running(int(owner[0]), int(owner[1])):
            shutil.rmtree(directory / name, ignore_errors=True)
            removed.append(f"pasta's PID directory {directory / name} (its owner {owner[0]} is gone)")
    return removed
