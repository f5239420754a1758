"""Rootless against root labkit: `labkit run -- true`, start → exit as a whole process,
the two called in turn in one run (a busy machine slows them alike).

    python benchmarks/rootless.py [--runs 20] [--user NAME]

- root:      `python -m labkit run -- true` as root (cgroups, the host's user namespace)
- rootless:  the same command as an ordinary user: the helper first enters a user
             namespace mapped by newuidmap/newgidmap, no cgroup (cgroup v1 has no delegation)
Both run the same interpreter with the same PYTHONPATH (this checkout and this venv's
packages), one another user can read; each has its own LABKIT_HOME. Without --user, a
throw-away user with a /etc/subuid range is made and removed. Printed, never asserted.
"""

import argparse
import os
import pwd
import subprocess
import sys
import sysconfig
import tempfile
import time

import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 3


def shared_python() -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", sys.executable):
        if os.path.exists(candidate) and os.access(candidate, os.X_OK) and os.stat(os.path.realpath(candidate)).st_mode & 0o001:
            return candidate
    sys.exit(f"no Python {version} an ordinary user may run")


def whole_process(command, env, user=None):
    def once():
        began = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=env["HOME"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              user=user, group=None if user is None else pwd.getpwnam(user).pw_gid,
                              extra_groups=None if user is None else [])
        seconds = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} as {user or 'root'} failed: {done.stderr.decode()[-300:]}")
        return seconds
    return once


def throwaway_user() -> str:
    name = f"lkbench{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
    with open("/etc/subuid") as handle:
        if not any(line.startswith(name + ":") for line in handle):
            first = 3_100_000_000 + (os.getpid() % 1000) * 65536
            subprocess.run(["usermod", "--add-subuids", f"{first}-{first + 65535}",
                            "--add-subgids", f"{first}-{first + 65535}", name], check=True)
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--user", help="an existing ordinary user with a /etc/subuid range (default: a throw-away one)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/rootless.py needs root: it runs labkit as root and as another user")
    python = shared_python()
    path = f"{ROOT}:{sysconfig.get_paths()['purelib']}"
    user = options.user or throwaway_user()
    try:
        home = pwd.getpwnam(user).pw_dir
        with tempfile.TemporaryDirectory(prefix="labkit-bench-root-") as root_home:
            base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": path}
            command = [python, "-m", "labkit", "run", "--", "true"]
            rows = {
                "root": whole_process(command, {**base, "HOME": "/root", "LABKIT_HOME": root_home}),
                "rootless": whole_process(command, {**base, "HOME": home, "USER": user}, user=user),
            }
            taken = timing.in_turn(rows, options.runs, WARMUP)
    finally:
        if options.user is None:
            subprocess.run(["userdel", "--remove", user], capture_output=True)
            subprocess.run(["sed", "-i", f"/^{user}:/d", "/etc/subuid", "/etc/subgid"], check=False)
    summary = {name: timing.summary(seconds) for name, seconds in taken.items()}
    print(f"labkit run -- true, whole process, {python} (median / p90 ms of {options.runs}, called in turn)")
    for name, row in summary.items():
        print(f"{name:10} {row['median_ms']:8.1f} {row['p90_ms']:8.1f}")
    print(f"rootless / root = {summary['rootless']['median_ms'] / summary['root']['median_ms']:.2f}")


if __name__ == "__main__":
    main()
