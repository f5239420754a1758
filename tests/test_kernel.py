"""The "Python 3 (labkit)" kernel: its spec, its install, and that stopping or ending a
kernel ends its containers and leaves nothing on the host."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_fixtures import (  # noqa: F401 — fixtures are used by name
    past_the_abort,
    LabkitKernel, cgroup_dirs, cgroup_pids, container_ids, kernel, labkit_kernelspec, mounts_mentioning,
    process_alive, searchable, wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC_FILES = ("kernel.json", "logo-32x32.png", "logo-64x64.png")


@pytest.mark.parametrize("name", SPEC_FILES)
def test_packaged_kernelspec_is_the_kernel_directory(name):
    """kernel/ is what people read; labkit/kernelspec/ is what ships. They must not drift
    (kernel/make_logo.py writes both)."""
    assert (ROOT / "labkit" / "kernelspec" / name).read_bytes() == (ROOT / "kernel" / name).read_bytes()


@pytest.mark.parametrize("size", (32, 64))
def test_logo_is_a_png_of_its_named_size(size):
    data = (ROOT / "kernel" / f"logo-{size}x{size}.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (size, size)


def test_kernelspec_loads_the_labkit_extension():
    spec = json.loads((ROOT / "kernel" / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (labkit)"
    assert spec["argv"][-2:] == ["--ext", "labkit"]
    assert "{connection_file}" in spec["argv"]


def test_install_points_the_kernel_at_the_installing_python(tmp_path):
    subprocess.run([sys.executable, "-m", "labkit.cli", "kernel", "install", "--prefix", str(tmp_path)],
                   check=True, capture_output=True)
    installed = tmp_path / "share" / "jupyter" / "kernels" / "labkit"
    spec = json.loads((installed / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert sorted(os.listdir(installed)) == sorted(SPEC_FILES)


def test_kernel_preloads_the_container_magic(kernel):
    reply = kernel.ok("print('container' in get_ipython().magics_manager.magics['cell'])")
    assert reply.stdout == "True\n"


# --- stop button, shutdown, restart ------------------------------------------------------


@pytest.fixture
def fresh_kernel(labkit_kernelspec, tmp_path):
    session = LabkitKernel(searchable(tmp_path / "labkit-home"))
    yield session
    session.shutdown(now=True)


def running_container(kernel, count=1):
    """Wait until `count` containers of this kernel run their command (`sleep`: the
    moment a student sees the cell running); returns {id: host pids}."""
    def found():
        ids = container_ids(kernel.home)
        pids = {i: cgroup_pids(i) for i in ids}
        return pids if len(ids) == count and all(map(runs_sleep, pids.values())) else None
    containers = wait_until(found, timeout=30)
    assert containers, f"no running container appeared in {kernel.home}"
    return containers


def runs_sleep(pids) -> bool:
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            pass
    return False


def assert_nothing_left(home, containers, timeout=15):
    """No state directory, cgroup, mount or process of these containers remains."""
    def clean():
        return (not container_ids(home) and not any(cgroup_dirs(i) for i in containers)
                and not mounts_mentioning(str(home))
                and not any(process_alive(p) for pids in containers.values() for p in pids))
    wait_until(clean, timeout)
    assert container_ids(home) == [], "container state directories left"
    assert [d for i in containers for d in cgroup_dirs(i)] == [], "cgroups left"
    assert mounts_mentioning(str(home)) == [], "mounts left"
    assert [p for pids in containers.values() for p in pids if process_alive(p)] == [], "processes left"


@pytest.mark.root
def test_stop_button_ends_the_container_and_leaves_nothing(fresh_kernel):
    msg_id = fresh_kernel.send("%%container\nsleep 30")
    containers = running_container(fresh_kernel)
    fresh_kernel.manager.interrupt_kernel()
    # A sleep that was not cut short would end in 30 s with status "ok": no clock needed.
    reply = fresh_kernel.collect(msg_id, timeout=120)
    assert (reply.status, reply.ename) == ("error", "KeyboardInterrupt")
    # One line, not IPython's traceback down through labkit's frames: formatting that took
    # most of the stop button's time (3.3 s on the host, far more in the emulated VM kernel).
    tracebacks = [content["traceback"] for kind, content in reply.messages if kind == "error"]
    assert len(tracebacks) == 1 and len(tracebacks[0]) == 1, tracebacks
    assert "labkit killed what the cell started" in tracebacks[0][0]
    assert_nothing_left(fresh_kernel.home, containers)
    past_the_abort(fresh_kernel.client)
    assert fresh_kernel.ok("%%container\necho still usable").stdout == "still usable\n"


@pytest.mark.root
def test_stop_button_during_exec_leaves_the_container_running(fresh_kernel):
    fresh_kernel.ok("%container run -d --name web -- sleep 1000")
    before = running_container(fresh_kernel)
    msg_id = fresh_kernel.send("%%container exec web\nsleep 30")
    assert wait_until(lambda: any(len(cgroup_pids(i)) > 1 for i in before), timeout=60), "the exec never started"
    fresh_kernel.manager.interrupt_kernel()
    reply = fresh_kernel.collect(msg_id, timeout=15)
    assert reply.ename == "KeyboardInterrupt"
    assert wait_until(lambda: all(len(cgroup_pids(i)) == 1 for i in before), timeout=15), "exec'd sleep survived"
    past_the_abort(fresh_kernel.client)
    assert "running" in fresh_kernel.ok("%container ps").stdout


@pytest.mark.root
@pytest.mark.parametrize("how", ("shutdown", "restart", "kill"))
def test_ending_the_kernel_removes_its_detached_containers(fresh_kernel, how):
    fresh_kernel.ok("%container run -d --name web -- sleep 1000")
    fresh_kernel.ok("%container run -d --name db --memory 16m -- sleep 1000")
    containers = running_container(fresh_kernel, count=2)
    if how == "restart":
        fresh_kernel.manager.restart_kernel(now=False)
    else:
        fresh_kernel.manager.shutdown_kernel(now=how == "kill")  # kill: SIGKILL, no atexit in the kernel
    assert_nothing_left(fresh_kernel.home, containers)


# --- headless runs must fail loudly on a misused magic --------------------------------------


@pytest.fixture
def misused_notebook(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell("%%container --no-such-option\ntrue"), new_code_cell("print('after')")])
    notebook.metadata["kernelspec"] = {"name": "labkit", "display_name": "Python 3 (labkit)", "language": "python"}
    path = tmp_path / "misused.ipynb"
    nbformat.write(notebook, path)
    return path


def test_notebooks_run_reports_a_misused_magic_and_fails(labkit_kernelspec, misused_notebook, tmp_path):
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "notebooks", "run", "--out", str(tmp_path / "out"),
                           str(misused_notebook)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "UsageError: unrecognized arguments: --no-such-option" in done.stdout
    assert (tmp_path / "out" / "misused.ipynb").exists()


def test_nbval_fails_a_misused_magic(labkit_kernelspec, misused_notebook):
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval",
                           "--nbval-kernel-name", "labkit", str(misused_notebook)],
                          capture_output=True, text=True, timeout=120, cwd=misused_notebook.parent)
    assert done.returncode == 1, done.stdout
    assert "1 failed" in done.stdout
