"""Every container's state, read from their directories (runtime/container_dir.py): who
runs, which layers they use, which a dead owner left behind, and the sweep that removes
those containers and cgroups (the network's part is swept beside it, by
runtime/client/leftovers.py).

Runs in the caller: `labkit ps`, `image rm`/`prune`, commit and diff, and the sweep
before a helper starts. The helper writes state.json (runtime/helper/zygote.py); this
module reads what every helper wrote."""

import json
import os
from pathlib import Path

from labkit.linux import processes
from labkit.runtime.container_dir import ContainerDir, containers_root, slots_root


def write_state(directory, state: dict) -> None:
    """Write the state.json of the container in `directory` (its layout is container_dir's)."""
    ContainerDir(directory).write_state(state)


def owner_alive(state: dict) -> bool:
    """Is the helper that made this container still running?"""
    return processes.is_running(state.get("owner_pid"), state.get("owner_start"))


def all_states(home: Path | None = None) -> list:
    root = containers_root(home)
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        state = ContainerDir(entry).read_state()
        if state is not None:
            state["dir"] = str(entry)
            found.append(state)
    return found


def host_containers(home: Path | None = None, hierarchy=None) -> list:
    """Every container's state on this host, its "status" the runtime's answer: what the
    owner last wrote, "running" when one written "created" has processes in its cgroup
    (the helper writes no state when the command starts: that write would sit on every
    start's path; only for a container without a cgroup, rootless, it writes "running"
    after the start is answered), or "orphaned" when the owner is gone (`labkit gc`
    removes those)."""
    from labkit.runtime import lifecycle

    _caught_up()
    states = all_states(home)
    for state in states:
        if not owner_alive(state):
            state["status"] = "orphaned"
        elif state.get("status") == lifecycle.CREATED and state.get("cgroup"):
            if hierarchy is None:
                from labkit.cgroups import container_hierarchy

                hierarchy = container_hierarchy()
            cgroup = hierarchy.open(state["cgroup"])
            if cgroup.exists() and cgroup.pids():
                state["status"] = lifecycle.RUNNING
        state.setdefault("status", "?")
    return states


def layers_in_use(home: Path | None = None) -> set:
    """The image layers (digests) that containers are built on, for `image rm` and `prune`.

    A container whose state cannot be read makes this raise: a layer it might use must
    not be removed on a guess."""
    from labkit.errors import ContainerError

    _caught_up()
    root = containers_root(home)
    used = set()
    if not root.is_dir():
        return used
    for entry in root.iterdir():
        state_file = ContainerDir(entry).state_file
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as error:
            raise ContainerError(
                f"cannot tell which layers container {entry.name} uses ({state_file}: {error}); "
                "not removing any layer; remove that container first"
            ) from None
        used.update(state.get("image_layers", []))
    return used


def find_container(reference: str, home: Path | None = None) -> dict:
    """The state of the container with that name, id or unique id prefix, with its "dir"
    and "upper" (its read-write layer) added, for commit and diff."""
    from labkit.errors import ContainerError

    _caught_up()
    states = all_states(home)
    exact = [s for s in states if reference in (s.get("name"), s.get("id"))]
    matches = exact or [s for s in states if str(s.get("id", "")).startswith(reference)]
    if len(matches) != 1:
        known = ", ".join(s.get("name", s.get("id", "?")) for s in states) or "none"
        why = "no container" if not matches else f"{len(matches)} containers"
        raise ContainerError(f"{why} matching {reference!r} (containers: {known}); give a name or a longer id")
    return {**matches[0], "upper": str(ContainerDir(matches[0]["dir"]).upper)}


# Set by runtime/client/helper_client.py (which imports this module, not the other way):
# waits until this process's helper, if it has one, has caught up.
catch_up = None


def _caught_up() -> None:
    """This process's helper (if it has one) has recorded every exit it told (it does
    right after telling it): a container of ours that exited is not listed as running,
    nor its layers as in use."""
    if catch_up is not None:
        catch_up()


def sweep(home: Path | None = None, hierarchy=None, min_age_seconds: float = 60.0) -> list:
    """Remove containers whose owner is dead (killed kernel, crashed script): their
    processes, cgroups and directories. Returns what was removed, for `labkit gc`."""
    import time

    from labkit.cgroups import container_hierarchy

    hierarchy = hierarchy or container_hierarchy()
    removed = []
    root = containers_root(home)
    live_ids = set()
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            state = ContainerDir(entry).read_state()
            if state is None:
                # A directory without state: torn down half-way, or still being made.
                if time.time() - entry.stat().st_mtime > min_age_seconds:
                    ContainerDir(entry).remove()
                    removed.append(f"directory {entry}")
                continue
            if owner_alive(state):
                live_ids.add(entry.name)
                live_ids.add(str(state.get("cgroup") or "").rsplit("/", 1)[-1])
                continue
            cgroup = hierarchy.open(state.get("cgroup") or f"labkit/{entry.name}")
            if cgroup.exists():
                cgroup.delete()
                removed.append(f"cgroup {cgroup.name}")
            ContainerDir(entry).remove()
            removed.append(f"container {state.get('name', entry.name)}")
    removed += _sweep_orphan_cgroups(hierarchy, live_ids, min_age_seconds)
    removed += _sweep_slot_directories(home)
    return removed


def _sweep_slot_directories(home):
    """A ready slot's directory (made ahead with its root) names its helper as its cgroup
    does: it goes once that helper is gone (killed: its slots die by their death signal)."""
    from labkit.cgroups.slot_cgroups import owner_of

    removed = []
    root = slots_root(home)
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        helper = owner_of(entry.name)
        if helper is None or not processes.is_running(*helper):
            ContainerDir(entry).remove()
            removed.append(f"slot directory {entry}")
    return removed


def _sweep_orphan_cgroups(hierarchy, live_ids, min_age_seconds):
    """Empty labkit cgroups no container claims. Other LABKIT_HOMEs share the cgroup
    parent, so only empty ones older than a minute go (a new one is empty for a moment).
    A pool slot's cgroup (runtime/helper/ready_slots.py) names its helper: it goes, empty, at once when
    that helper is gone, and never while it lives (it may be a container's by now)."""
    import time

    from labkit.cgroups.slot_cgroups import owner_of

    removed = []
    for name in hierarchy.children():
        leaf = name.rsplit("/", 1)[-1]
        if leaf in live_ids:
            continue
        helper = owner_of(leaf)
        if helper is not None and processes.is_running(*helper):
            continue
        cgroup = hierarchy.open(name)
        if cgroup.pids():
            continue
        if helper is not None:
            cgroup.delete()
            removed.append(f"cgroup {name}")
            continue
        try:
            age = time.time() - os.stat(_any_dir(cgroup)).st_mtime
        except (FileNotFoundError, TypeError):
            continue
        if age > min_age_seconds:
            cgroup.delete()
            removed.append(f"cgroup {name}")
    return removed


def _any_dir(cgroup):
    if hasattr(cgroup, "path"):
        return cgroup.path
    return next(iter(cgroup.dirs.values()), None)
