"""Rootless nbval: run as an ordinary user, some cells print what only differs because no
root ran them (the user namespace's map from the user's /etc/subuid range, the user's own
cgroup, the line saying limits are off). Such a cell keeps those outputs, recorded from a
real rootless run by `python tests/rootless_notebooks.py record`, in
`metadata.labkit.rootless_outputs`; as a non-root user nbval compares against them instead,
after replacing the running user's uid, range start and cgroup path with placeholders (the
stored outputs carry the same placeholders). As root nothing here changes anything."""

import os
import re

ROOTLESS_KEY = "rootless_outputs"

# notebooks/labs/ holds the labs' released copies: no outputs, so nothing for nbval to compare.
# Their sources, with outputs, are instructor/labs/ (nbval runs those; instructor/labs/conftest.py
# uses this file's hooks); tests/test_released_labs.py checks the copies.
collect_ignore_glob = ["labs/*.ipynb"]


def _memory_cgroup(pid="self") -> str | None:
    """The memory (v1) or unified (v2) cgroup path of a process: where its kernel's containers go rootless."""
    with open(f"/proc/{pid}/cgroup") as handle:
        lines = [line.rstrip("\n").split(":", 2) for line in handle]
    by_controller = {controllers: path for _, controllers, path in lines}
    for controllers, path in by_controller.items():
        if "memory" in controllers.split(","):
            return path
    return by_controller.get("")


def _range_start(name) -> int | None:
    try:
        with open("/etc/subuid") as table:
            for line in table:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] == name:
                    return int(fields[1])
    except FileNotFoundError:
        pass
    return None


def user_patterns(uid, name, cgroup=None) -> list:
    """(regex, replacement) for what is this user's own: cgroup path, subordinate range start, uid."""
    cgroup = cgroup if cgroup is not None else _memory_cgroup()
    patterns = []
    if cgroup and cgroup != "/":
        patterns.append((re.escape(cgroup) + r"(?![\w.-])", "USER-CGROUP"))
    start = _range_start(name)
    if start is not None:
        patterns.append((rf"\b{start}\b", "SUBUID-START"))
    patterns.append((rf"(?<![\d.]){uid}(?!\.?\d)", "USER-UID"))
    return patterns


def _rootless() -> bool:
    return os.geteuid() != 0


def pytest_collectstart(collector):
    if not _rootless() or getattr(collector, "fspath", None) is None or collector.fspath.ext != ".ipynb" \
            or not hasattr(collector, "setup_sanitize_files"):
        return
    load = collector.setup_sanitize_files

    def with_the_users_own():
        import pwd
        from collections import OrderedDict

        load()
        # First: sanitize.cfg's rules must not cut a part out of a path or number of the user's.
        mine = OrderedDict(user_patterns(os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name))
        mine.update(collector.sanitize_patterns)
        collector.sanitize_patterns = mine

    collector.setup_sanitize_files = with_the_users_own


def pytest_collection_modifyitems(config, items):
    if not _rootless():
        return
    import nbformat

    for item in items:
        cell = getattr(item, "cell", None)
        stored = cell.get("metadata", {}).get("labkit", {}).get(ROOTLESS_KEY) if cell is not None else None
        if stored is not None:
            cell.outputs = [nbformat.from_dict(output) for output in stored]
