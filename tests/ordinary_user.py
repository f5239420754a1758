"""Run labkit as an ordinary host user (uid/gid 65534, nobody, through setpriv), as a
student on a shared machine would: from a copy of the source any user may read (the
checkout may sit below a directory only root may enter, as a fresh clone in CI does),
with the system's Python and a home of its own."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # one any user may run (the test's own venv may sit in root's home)
SOURCE = Path(__file__).resolve().parents[1] / "labkit"


class OrdinaryUser:
    """A readable copy of labkit and a private home for uid `uid`; `run` runs Python code
    (or `-m labkit.cli ...`) as that user. `remove()` deletes both."""

    def __init__(self, uid=NOBODY, gid=NOBODY):
        self.uid, self.gid = uid, gid
        self.root = Path(tempfile.mkdtemp(prefix="labkit-ordinary-"))
        os.chmod(self.root, 0o755)
        shutil.copytree(SOURCE, self.root / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
        self.home = self.root / "home"
        self.home.mkdir(mode=0o700)
        os.chown(self.home, uid, gid)

    def run(self, *python_args, preexec_fn=None, timeout=120) -> subprocess.CompletedProcess:
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
                       "PYTHONPATH": str(self.root), "LABKIT_HOME": str(self.home / "labkit"),
                       "PYTHONDONTWRITEBYTECODE": "1"}
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
                SYSTEM_PYTHON, *python_args]
        return subprocess.run(argv, env=environment, cwd="/", capture_output=True, text=True,
                              timeout=timeout, preexec_fn=preexec_fn)

    def remove(self):
        shutil.rmtree(self.root)
