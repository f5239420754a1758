"""`labkit lab` starts JupyterLab on the notebooks; `labkit notebooks run` executes them
headless (nbclient, the labkit kernel) and writes the executed copies.

    labkit lab [--port 8888] [--notebooks DIR] [--vm]
    labkit notebooks run [--out DIR | --in-place] [NOTEBOOK ...]
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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
#
# JupyterLab starts every kernel in a session of its own, and each kernel's labkit helper
# runs below it, so neither SIGTERM to the server nor to the server's process group
# reaches them: left alone they outlive `labkit lab`, orphaned, with their containers.
# `labkit lab` therefore makes itself a child subreaper (orphans below it are re-parented
# to it, not to init), asks the server to stop (it shuts its kernels down, and a kernel's
# helper removes that kernel's containers), and then stops whatever is still below it.

SERVER_GRACE = 20.0        # seconds the server gets to shut its kernels down
DESCENDANTS_GRACE = 15.0   # seconds kernels and helpers get after SIGTERM, before SIGKILL
ANSWER_TIMEOUT = 120.0     # seconds JupyterLab may take to answer its first request


class Stopping(Exception):
    """SIGTERM or SIGINT arrived: shut the lab down."""


def lab_command(notebooks: Path, port: int) -> list:
    """The JupyterLab command line. The token is not on it: argv is readable by every
    local user in /proc/<pid>/cmdline; the server reads it from JUPYTER_TOKEN, and a
    process's environment is readable only by its owner."""
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebooks}",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               "--ServerApp.open_browser=False",
               "--MultiKernelManager.default_kernel_name=labkit"]  # new notebooks get the magics
    if os.geteuid() == 0:
        command.append("--allow-root")  # labkit runs as root to make namespaces and cgroups
    return command


def lab_environment(token: str, vm_specs: Path | None = None) -> dict:
    """`vm_specs`: a directory whose kernels/labkit is the VM kernel; first on
    JUPYTER_PATH, so that the notebooks, which name the `labkit` kernel, get it."""
    environment = dict(os.environ, JUPYTER_TOKEN=token)
    if vm_specs is not None:
        environment["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(vm_specs), os.environ.get("JUPYTER_PATH")]))
    return environment


def use_vm_kernel(asked: bool, say=print) -> bool:
    """--vm (an error if the VM is not set up), or, by itself, where labkit doctor finds
    that containers cannot be made and the VM can start (said once, either way)."""
    from labkit.doctor import namespaces_usable

    from labkit.vm import status

    if asked:
        report = status()
        if not report.can_run:
            raise HostError("the VM kernel cannot start here: " + "; ".join(report.missing))
        return True
    usable, why = namespaces_usable()
    if usable:
        return False
    report = status()
    if not report.can_run:
        say(f"labkit lab: containers cannot be made on this host ({why}), and the VM kernel that would make "
            f"them cannot start ({'; '.join(report.missing)}); the notebooks' container cells will fail")
        return False
    say(f"labkit lab: containers cannot be made on this host ({why}); "
        "the notebooks' kernel runs in a VM instead (\"Python 3 (labkit in a VM)\")")
    return True


def write_vm_specs(directory: Path) -> Path:
    """kernels/labkit and kernels/labkit-vm, both the VM kernel, under `directory`."""
    from labkit.kernelspec import KERNEL_NAME, VM_KERNEL_NAME, write_spec

    for name in (KERNEL_NAME, VM_KERNEL_NAME):
        write_spec(directory / "kernels" / name, vm=True)
    return directory


def server_answers(url: str, token: str) -> bool:
    request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def wait_until_answering(server: subprocess.Popen, url: str, token: str, timeout: float = ANSWER_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not server_answers(url, token):
        if server.poll() is not None:
            raise HostError(f"JupyterLab exited with status {server.returncode} before it answered on {url}; "
                            "its messages are above")
        if time.monotonic() > deadline:
            raise HostError(f"JupyterLab did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.25)


def descendants(pid: int) -> list:
    """Every process below `pid` (children first, then theirs), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # the command name (field 2) may hold spaces and parentheses: split after it
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def reap_orphans() -> None:
    """Collect the exit status of re-parented children (we are their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def signal_all(pids, signum) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def wait_for_no_descendants(timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        reap_orphans()
        left = [pid for pid in descendants(os.getpid()) if not _is_zombie(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def shut_down(server: subprocess.Popen) -> None:
    """Server first (it shuts its kernels down), then what is left below us: SIGTERM so
    that each helper removes its containers, SIGKILL for what ignores that."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=SERVER_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    left = wait_for_no_descendants(timeout=1.0)
    if left:
        signal_all(left, signal.SIGTERM)
        left = wait_for_no_descendants(timeout=DESCENDANTS_GRACE)
    if left:
        print(f"labkit lab: killing {len(left)} process(es) that ignored SIGTERM: {left}", file=sys.stderr)
        signal_all(left, signal.SIGKILL)
        wait_for_no_descendants(timeout=DESCENDANTS_GRACE)


def _raise_stopping(signum, frame):
    raise Stopping(signal.Signals(signum).name)


def cmd_lab(options):
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        raise HostError("JupyterLab is not installed; pip install 'labkit[lab]' (make lab does this)") from None
    from labkit.linux import syscalls

    notebooks = Path(options.notebooks or default_notebooks()).resolve()
    if not notebooks.is_dir():
        raise HostError(f"no notebooks directory at {notebooks}; pass --notebooks DIR")
    ensure_kernelspec()
    vm_specs = None
    if use_vm_kernel(options.vm, say=lambda line: print(line, file=sys.stderr, flush=True)):
        vm_specs = write_vm_specs(Path(tempfile.mkdtemp(prefix="labkit-lab-vm-specs-")))
    port = free_port(options.port)
    token = secrets.token_hex(24)
    url = f"http://127.0.0.1:{port}"
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    previous = {signum: signal.signal(signum, _raise_stopping) for signum in (signal.SIGTERM, signal.SIGINT)}
    server = None
    try:
        # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
        server = subprocess.Popen(lab_command(notebooks, port), env=lab_environment(token, vm_specs),
                                  start_new_session=True)
        wait_until_answering(server, url, token)
        print(f"JupyterLab on {notebooks}\n\n    {url}/lab?token={token}\n\n"
              f"(bound to 127.0.0.1 only; from another machine: ssh -L {port}:127.0.0.1:{port} HOST)", flush=True)
        return server.wait()
    except Stopping as stopping:
        print(f"labkit lab: {stopping}: stopping JupyterLab, its kernels and their containers",
              file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            shut_down(server)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if vm_specs is not None:
            shutil.rmtree(vm_specs, ignore_errors=True)


# --- labkit notebooks run ---------------------------------------------------------------


def notebooks_to_run(names, notebooks: Path) -> list:
    if names:
        return [Path(name).resolve() for name in names]
    return sorted(path for path in notebooks.glob("*.ipynb"))


def execute(path: Path, kernel_name: str = "labkit", timeout: int = 600, startup_timeout: int = 60):
    """Run every cell of one notebook in a fresh kernel; returns (notebook, error or None).
    `startup_timeout`: seconds the kernel may take to answer (minutes under emulation)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name=kernel_name, timeout=timeout, startup_timeout=startup_timeout,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as error:
        return notebook, error
    strip_widgets(notebook)
    coalesce_streams(notebook)
    return notebook, None


def strip_widgets(notebook) -> None:
    """A cell tagged `strip-output` shows a live widget: a browser draws it, and its saved
    text (`VBox(children=…)`) tells a reader nothing, so the saved copy keeps no output."""
    for cell in notebook.cells:
        if "strip-output" in cell.get("metadata", {}).get("tags", []):
            cell.outputs = []
    notebook.metadata.pop("widgets", None)


def coalesce_streams(notebook) -> None:
    """One output per run of the same stream: a kernel sends a cell's stdout in pieces as it
    flushes (`hostname:` then ` lab`), and the saved copy would keep each piece, some blank.
    A browser joins them on display and nbval joins them before comparing; the saved copy
    does the same, so a reader of the file sees what the cell printed."""
    for cell in notebook.cells:
        merged = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                    and merged[-1].get("name") == output.get("name"):
                merged[-1]["text"] = "".join(merged[-1]["text"]) + "".join(output["text"])
            else:
                merged.append(output)
        if "outputs" in cell:
            cell.outputs = merged


def cmd_notebooks_run(options):
    import nbformat

    ensure_kernelspec()
    notebooks = default_notebooks()
    out = None if options.in_place else Path(options.out or notebooks / "executed")
    failed = 0
    for path in notebooks_to_run(options.notebooks, notebooks):
        started = time.monotonic()
        notebook, error = execute(path, timeout=options.timeout, startup_timeout=options.startup_timeout)
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
    lab.add_argument("--vm", action="store_true",
                     help="run the notebooks' kernel in a VM (chosen by itself where containers cannot be made)")
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
    run.add_argument("--startup-timeout", type=int, default=60,
                     help="seconds a kernel may take to start (default 60; raise it in an emulated VM)")
    run.set_defaults(func=cmd_notebooks_run)
