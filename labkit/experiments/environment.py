"""The environment record kept beside every result: what a number was measured on."""

import datetime
import os
import platform
import subprocess
from pathlib import Path


def environment() -> dict:
    uname = os.uname()
    return {
        "kernel_release": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "hostname": uname.nodename,
        **_cgroups(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_total(),
        "python": platform.python_version(),
        "labkit_version": _labkit_version(),
        "labkit_commit": _git_commit(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cgroups() -> dict:
    from labkit.cgroups import detect_mode, host_hierarchy
    from labkit.errors import LabkitError

    try:
        return {"cgroup_mode": detect_mode(), "cgroup_controllers": sorted(host_hierarchy().controllers)}
    except LabkitError as error:
        return {"cgroup_mode": None, "cgroup_controllers": [], "cgroup_error": str(error)}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _labkit_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labkit")
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The checkout's commit, with '-dirty' when it has uncommitted changes."""
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None
