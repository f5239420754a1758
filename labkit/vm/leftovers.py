"""Cleaning up after runs whose process died without cleaning up (SIGKILL, a crash).

Each run keeps its files in /tmp/labkit-vm-<pid of the run>-*, and its QEMU names a
file there on its command line. A later run removes both when that pid is gone.
QEMU is also started with a parent-death signal (see qemu.py), which killed it when
the CLI was SIGKILLed in our tests; this sweep is the backstop for when it does not
arrive (a parent-death signal follows the starting thread, and not every setup
delivers it: a plain `setpriv --pdeathsig KILL sleep` survived its parent here).
"""

import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

TEMP_PREFIX = "labkit-vm-"


def new_run_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))


def sweep_leftovers_of_dead_runs() -> list[str]:
    """Kill the QEMUs and remove the temp dirs of runs whose process is gone: this user's
    only. /tmp is everyone's: a directory another user made with a name of this form (and
    a process naming it), swept, let that user end any process of this one's, or of root's
    (an audit, as a student; a process of another user's raised PermissionError here too,
    and every VM kernel of the others failed to start)."""
    swept = []
    for run_dir in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        owner = run_dir.name.removeprefix(TEMP_PREFIX).split("-")[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists() or not _ours(run_dir):
            continue
        for pid in qemus_using(run_dir):
            try:
                os.kill(pid, signal.SIGKILL)
                swept.append(f"QEMU pid {pid}")
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(run_dir, ignore_errors=True)
        swept.append(str(run_dir))
    return swept


def _ours(path: Path) -> bool:
    """A directory (not a link) of this user's."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def qemus_using(run_dir: Path) -> list[int]:
    """This user's QEMU processes whose command line names `run_dir`."""
    needle = f"{run_dir}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry.stat().st_uid == os.getuid() and (entry / "comm").read_text().startswith("qemu")
                    and needle in (entry / "cmdline").read_bytes()):
                found.append(int(entry.name))
        except OSError:
            pass  # exited while we looked
    return found
