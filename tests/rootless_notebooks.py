"""The notebooks as an ordinary user: a throw-away user (tests/throwaway_users.py) gets a copy
of notebooks/ and of the labs' sources (instructor/labs/, side by side as in the checkout) in
its 0700 home and runs them with this checkout's class environment (.venv/class: the
system's Python, which every user may run; labkit editable from here). A notebook is named
by its path below notebooks/; a lab's source is `../instructor/labs/NAME` (a released copy
under notebooks/labs/ has no outputs to compare).

    with notebooks_as_user() as run:
        run.nbval("01-namespaces.ipynb")          # strict nbval, rootless
        run.execute("04-cgroups-memory.ipynb")    # an executed copy (nbformat), errors kept
        run.nbval(LAB + "02-cgroups-lab.ipynb")   # a lab's source

`python tests/rootless_notebooks.py record NOTEBOOK...` (as root) stores, for each code cell
whose rootless outputs differ from the stored ones after sanitising, the rootless outputs in
`metadata.labkit.rootless_outputs`, with the recording user's ids already replaced by the
placeholders notebooks/conftest.py substitutes at run time."""

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbval.plugin import get_sanitize_patterns


def _notebooks_conftest():
    """notebooks/conftest.py, under a name of its own (pytest has other modules called conftest)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("labkit_notebooks_conftest",
                                                  Path(__file__).resolve().parent.parent / "notebooks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOTLESS_KEY = _notebooks_conftest().ROOTLESS_KEY
user_patterns = _notebooks_conftest().user_patterns

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
LAB_SOURCES = REPO / "instructor" / "labs"
LAB = "../instructor/labs/"    # a lab's source, named from notebooks/
CLASS_PYTHON = REPO / ".venv" / "class" / "bin" / "python"

EXECUTE = r"""
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
# startup_timeout: under emulation (the v2 lane's guest) a kernel's cold start takes minutes.
NotebookClient(nb, kernel_name="labkit", timeout=900, startup_timeout=900, allow_errors=True,
               resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, sys.argv[2])
"""


def unreadable(path: Path) -> str | None:
    """Why another user cannot read `path` (each directory above must let others pass), or None."""
    for directory in (path, *path.parents):
        mode = os.stat(directory).st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return f"{directory} (mode {oct(stat.S_IMODE(mode))}) lets no other user through"
    return None


def why_not() -> str | None:
    """Why the notebooks cannot run here as an ordinary user, or None."""
    if os.geteuid() != 0:
        return "makes a throw-away user: needs root"
    if not os.path.exists("/usr/bin/newuidmap"):
        return "newuidmap/newgidmap are not installed (Debian package uidmap)"
    if not CLASS_PYTHON.exists():
        return f"{CLASS_PYTHON} is missing: `make setup` makes the class environment"
    why = unreadable(REPO / "labkit") or unreadable(CLASS_PYTHON.parent)
    if why:
        return f"this checkout cannot be read by an ordinary user: {why}; clone it somewhere readable"
    return None


class UserNotebooks:
    def __init__(self, user, env=None, cgroup_procs=None):
        self.user = user
        self.copy = Path(user.home) / "labkit" / "notebooks"
        self.env = {"PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        self.cgroup_procs = cgroup_procs    # the session cgroup of a delegated subtree, if any

    def _run(self, argv, timeout):
        return self.user.run([str(CLASS_PYTHON), *argv], cwd=str(self.copy), timeout=timeout, env=self.env,
                             cgroup_procs=self.cgroup_procs)

    def nbval(self, *notebooks, timeout=1800) -> subprocess.CompletedProcess:
        """Strict nbval of `notebooks` (paths below notebooks/, a lab's source LAB + name) as the user."""
        return self._run(["-m", "pytest", "-p", "no:cacheprovider", "--nbval", "--nbval-kernel-name", "labkit",
                          "--nbval-sanitize-with", "sanitize.cfg", *notebooks], timeout)

    def execute(self, notebook, timeout=1800):
        """`notebook` executed by nbclient as the user (errors kept in the outputs)."""
        source = self.copy / notebook
        out = self.copy / (notebook + ".executed")
        done = self._run(["-c", EXECUTE, str(source), str(out), str(source.parent)], timeout)
        if done.returncode != 0:
            raise AssertionError(f"nbclient failed on {notebook} as {self.user.name}: {done.stderr[-3000:]}")
        return nbformat.read(str(out), as_version=4)


@contextlib.contextmanager
def notebooks_as_user(delegated=False):
    """With `delegated`, the user's kernels run in a cgroup v2 subtree delegated to it (as
    systemd's Delegate=yes does) and keep LABKIT_HOME in a directory of the user's on /tmp:
    the cgroup v2 VM's / is an overlay, where an overlay's upper directory cannot live."""
    from throwaway_users import delegated_subtree, throwaway_user

    with throwaway_user("lknb") as user:
        copy = Path(user.home) / "labkit"
        ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
        shutil.copytree(NOTEBOOKS, copy / "notebooks", ignore=ignore)
        shutil.copytree(LAB_SOURCES, copy / "instructor" / "labs", ignore=ignore)
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(copy)], check=True)
        if not delegated:
            yield UserNotebooks(user)
            return
        home = tempfile.mkdtemp(prefix=f"labkit-{user.name}-", dir="/tmp")
        try:
            os.chown(home, user.uid, user.gid)
            with delegated_subtree(user) as (_, session):
                # Under emulation a cold helper start (modules read over 9p) outlasts 30 s.
                yield UserNotebooks(user, env={"LABKIT_HOME": home, "LABKIT_HELPER_TIMEOUT": "600"},
                                    cgroup_procs=os.path.join(session, "cgroup.procs"))
        finally:
            shutil.rmtree(home)


SKIP = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
        "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


def _apply(text, patterns):
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    return text


def _compared(outputs, patterns, skip) -> dict:
    """What strict nbval compares of `outputs` (nbval's CompareOutputs: by key, sanitised)."""
    from nbval.plugin import coalesce_streams

    seen = {}
    for output in coalesce_streams([nbformat.from_dict(json.loads(json.dumps(o))) for o in outputs]):
        for key, value in output.items():
            if key in skip:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for name, item in items:
                if name not in skip:
                    text = "".join(item) if isinstance(item, list) else str(item)
                    seen.setdefault(name, []).append(_apply(text, patterns))
    return seen


def _checked(cell) -> bool:
    from nbval.plugin import find_comment_markers, find_metadata_tags

    options = dict(find_metadata_tags(cell.metadata))
    options.update(dict(find_comment_markers(cell.source)))
    return options.get("check", True) and not options.get("skip", False) and cell.execution_count is not None


def _store(stored, rootless, mine, skip, extra=()) -> int:
    """Keeps in `stored` the rootless outputs of each checked cell where they differ; returns how many."""
    root_patterns = list(get_sanitize_patterns((NOTEBOOKS / "sanitize.cfg").read_text())) + list(extra)
    changed = 0
    for cell, ran in zip(stored.cells, rootless):
        if cell.cell_type != "code":
            continue
        cell.metadata.get("labkit", {}).pop(ROOTLESS_KEY, None)
        if cell.metadata.get("labkit") == {}:
            del cell.metadata["labkit"]
        if ran is None or not _checked(cell):
            continue
        outputs = json.loads(_apply(json.dumps([dict(o) for o in ran]), mine))
        if _compared(cell.outputs, mine + root_patterns, skip) != _compared(outputs, root_patterns, skip):
            for output in outputs:
                if "execution_count" in output:
                    output["execution_count"] = cell.execution_count
            cell.metadata.setdefault("labkit", {})[ROOTLESS_KEY] = outputs
            changed += 1
    return changed


def _is_lab(relative) -> bool:
    return relative.startswith(LAB)


def _skip_for(relative):
    from labkit.grading.checks import MIME

    return SKIP + ((MIME,) if _is_lab(relative) else ())   # instructor/labs/conftest.py


def _patterns_for(relative) -> list:
    """The sanitising instructor/labs/conftest.py adds for a lab: the table's observed column."""
    from labkit.grading.checks import OBSERVED_SANITIZE

    return [OBSERVED_SANITIZE] if _is_lab(relative) else []


def _record(paths):
    with notebooks_as_user() as run:
        mine = user_patterns(run.user.uid, run.user.name)
        for path in paths:
            relative = os.path.relpath(Path(path).resolve(), NOTEBOOKS)   # a lab's source: ../instructor/labs/
            stored = nbformat.read(str(NOTEBOOKS / relative), as_version=4)
            ran = [cell.outputs if cell.cell_type == "code" else None for cell in run.execute(relative).cells]
            changed = _store(stored, ran, mine, _skip_for(relative), _patterns_for(relative))
            nbformat.write(stored, str(NOTEBOOKS / relative))
            print(f"{relative}: {changed} cells with rootless outputs of their own")


if __name__ == "__main__":
    if sys.argv[1:2] != ["record"] or len(sys.argv) < 3:
        sys.exit("usage: python tests/rootless_notebooks.py record NOTEBOOK...")
    why = why_not()
    if why:
        sys.exit(f"cannot record: {why}")
    sys.path.insert(0, str(REPO / "tests"))
    _record(sys.argv[2:])
