"""`labkit lab` starts JupyterLab on the notebooks; `labkit notebooks run` executes them
headless (nbclient, the labkit kernel) and writes the executed copies.

    labkit lab [--port 8888] [--notebooks DIR]
    labkit notebooks run [--out DIR | --in-place] [NOTEBOOK ...]
"""

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from labkit.errors import HostError

CHECKOUT_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def default_notebooks() -> Path:
    """The checkout's notebooks/ (an editable install), else ./notebooks."""
    return CHECKOUT_NOTEBOOKS if CHECKOUT_NOTEBOOKS.is_dir() else Path.cwd() / "notebooks"


def ensure_kernelspec() -> None:
    """The notebooks name the `labkit` kernel: install it for this Python if it is missing."""
    from jupyter_client.kernelspec import KernelSpecManager

    from labkit.kernelspec import KERNEL_NAME, install

    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        where = install(prefix=sys.prefix)
        print(f"installed the {KERNEL_NAME!r} kernel in {where}", file=sys.stderr)


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise HostError("no free TCP port on 127.0.0.1 for JupyterLab")


# --- labkit lab -----------------------------------------------------------------------


def lab_command(notebooks: Path, port: int, token: str) -> list:
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebooks}",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
               "--MultiKernelManager.default_kernel_name=labkit"]  # new notebooks get the magics
    if os.geteuid() == 0:
        command.append("--allow-root")  # labkit runs as root to make namespaces and cgroups
    return command


def cmd_lab(options):
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        raise HostError("JupyterLab is not installed; pip install 'labkit[lab]' (make lab does this)") from None
    notebooks = Path(options.notebooks or default_notebooks()).resolve()
    if not notebooks.is_dir():
        raise HostError(f"no notebooks directory at {notebooks}; pass --notebooks DIR")
    ensure_kernelspec()
    port = free_port(options.port)
    token = secrets.token_hex(24)
    print(f"JupyterLab on {notebooks}\n\n    http://127.0.0.1:{port}/lab?token={token}\n\n"
          f"(bound to 127.0.0.1 only; from another machine: ssh -L {port}:127.0.0.1:{port} HOST)", flush=True)
    try:
        return subprocess.call(lab_command(notebooks, port, token))
    except KeyboardInterrupt:
        return 130


# --- labkit notebooks run ---------------------------------------------------------------


def notebooks_to_run(names, notebooks: Path) -> list:
    if names:
        return [Path(name).resolve() for name in names]
    return sorted(path for path in notebooks.glob("*.ipynb"))


def execute(path: Path, kernel_name: str = "labkit", timeout: int = 600):
    """Run every cell of one notebook in a fresh kernel; returns (notebook, error or None)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=timeout,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as error:
        return notebook, error
    return notebook, None


def cmd_notebooks_run(options):
    import nbformat

    ensure_kernelspec()
    notebooks = default_notebooks()
    out = None if options.in_place else Path(options.out or notebooks / "executed")
    failed = 0
    for path in notebooks_to_run(options.notebooks, notebooks):
        started = time.monotonic()
        notebook, error = execute(path, timeout=options.timeout)
        target = path if out is None else out / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)
        seconds = time.monotonic() - started
        if error is None:
            print(f"ok      {path.name}  ({seconds:.1f} s) -> {target}")
        else:
            failed += 1
            reason = f"{error.ename}: {(error.evalue or '').strip().splitlines()[0] if error.evalue else ''}"
            print(f"FAILED  {path.name}  ({seconds:.1f} s) -> {target}\n        {reason}")
    return 1 if failed else 0


def add_subcommand(subparsers):
    lab = subparsers.add_parser("lab", help="start JupyterLab on the notebooks (127.0.0.1, with a token)")
    lab.add_argument("--port", type=int, default=8888, help="preferred port (default 8888; a free one if taken)")
    lab.add_argument("--notebooks", help=f"directory to serve (default {default_notebooks()})")
    lab.set_defaults(func=cmd_lab)

    notebooks = subparsers.add_parser("notebooks", help="execute the notebooks headless")
    verbs = notebooks.add_subparsers(dest="notebooks_verb", metavar="ACTION")
    verbs.required = True
    run = verbs.add_parser("run", help="run every notebook with the labkit kernel and write the executed copies")
    run.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="default: every notebooks/*.ipynb")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--out", help="directory for executed copies (default notebooks/executed)")
    where.add_argument("--in-place", action="store_true", help="write the outputs into the notebooks themselves")
    run.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    run.set_defaults(func=cmd_notebooks_run)
