"""The "Python 3 (labkit in a VM)" kernel (labkit.vm.provisioner), driven through
jupyter_client as JupyterLab drives it.

One guest boots for the whole module (~10 s under emulation, plus the kernel's own
start-up, which dominates: ~45 s on a loaded 2-core host); restart reuses it, and the
last booting test shuts it down and checks that no QEMU is left. Skips,
naming what is missing, where `labkit vm setup` has not run.
"""

import json
import os
import queue
import subprocess
import sys
import time

import pytest
from kernel_fixtures import past_the_abort
from test_vm import leftovers_of, vm_test

from labkit.kernelspec import VM_KERNEL_NAME, write_spec
from labkit.vm.agent import Agent, Warm, fork_kernel, warm_start_possible
from labkit.vm.provisioner import hidden_in_the_guest

STARTUP_TIMEOUT = 600   # a loaded 2-core host under emulation; the benchmark reports real times
CELL_TIMEOUT = 300


class VMKernel:
    def __init__(self, spec_dir, cwd):
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        write_spec(spec_dir / VM_KERNEL_NAME, vm=True)
        specs = KernelSpecManager(kernel_dirs=[str(spec_dir)])
        self.manager = KernelManager(kernel_name=VM_KERNEL_NAME, kernel_spec_manager=specs)
        self.manager.start_kernel(cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=STARTUP_TIMEOUT)

    def run(self, code, timeout=CELL_TIMEOUT, streams=("stdout", "stderr")):
        """(reply content, text the cell printed on `streams`, and its errors)."""
        printed = []

        def output(message):
            if message["msg_type"] == "stream" and message["content"]["name"] in streams:
                printed.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                printed.append("\n".join(message["content"]["traceback"]))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=output)
        return reply["content"], "".join(printed)

    def value(self, expression):
        # stdout only: a restarted kernel's first cell also says, on stderr, that it runs in a VM
        content, printed = self.run(f"import os\nprint(repr({expression}))", streams=("stdout",))
        assert content["status"] == "ok", printed
        return eval(printed.strip().splitlines()[-1])  # noqa: S307 — our own repr()

    @property
    def qemu_pid(self):
        return self.manager.provisioner.guest.qemu.pid


@pytest.fixture(scope="module")
def vm_kernel(tmp_path_factory):
    hidden = hidden_in_the_guest(sys.executable)
    if hidden:   # e.g. a fresh clone in a mktemp dir: the guest's own /tmp hides its venv
        pytest.skip(hidden)
    work = tmp_path_factory.mktemp("vm-kernel")
    notebooks = work / "notebooks"
    notebooks.mkdir()
    kernel = VMKernel(work / "kernels", notebooks)
    kernel.notebooks = notebooks
    kernel.first_output = kernel.run("pass")[1]
    try:
        yield kernel
    finally:
        kernel.client.stop_channels()
        if kernel.manager.has_kernel:
            kernel.manager.shutdown_kernel(now=True)
        elif kernel.manager.provisioner is not None:  # the kernel died; its guest may not have
            kernel.manager.cleanup_resources()


@vm_test
def test_vm_kernel_runs_containers_on_cgroup_v2_with_the_notebooks_shared(vm_kernel):
    assert "this kernel runs inside a VM" in vm_kernel.first_output  # the boot's cost is shown, once
    assert "booted in" in vm_kernel.first_output or "restored from a snapshot in" in vm_kernel.first_output
    assert "runs inside a VM" not in vm_kernel.run("pass")[1]
    assert vm_kernel.value("os.uname().release") != os.uname().release  # the guest's own kernel
    assert vm_kernel.value("os.uname().nodename") == os.uname().nodename  # not "(none)": the notebooks print it
    assert vm_kernel.value("os.getcwd()") == str(vm_kernel.notebooks)
    content, printed = vm_kernel.run("open('from-the-vm.txt', 'w').write('written inside')")
    assert content["status"] == "ok", printed
    assert (vm_kernel.notebooks / "from-the-vm.txt").read_text() == "written inside"

    content, printed = vm_kernel.run("%%container\nhostname; cat /proc/self/cgroup")
    assert content["status"] == "ok", printed
    assert "0::/" in printed  # the container's cgroup, on the guest's unified hierarchy

    content, printed = vm_kernel.run("%%container --memory 32m\ncat /sys/fs/cgroup/memory.max")
    assert content["status"] == "ok", printed
    assert str(32 << 20) in printed.split()


@vm_test
def test_vm_kernel_interrupt_stops_a_long_container_cell(vm_kernel):
    client = vm_kernel.client
    while True:  # drain what earlier cells left on iopub
        try:
            client.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            break
    request = client.execute("%%container\necho started; sleep 100")
    deadline = time.monotonic() + CELL_TIMEOUT
    while True:
        message = client.get_iopub_msg(timeout=max(1, deadline - time.monotonic()))
        if message["parent_header"].get("msg_id") != request:
            continue
        if message["msg_type"] == "stream" and "started" in message["content"]["text"]:
            break
        assert message["msg_type"] != "error", message["content"]
    vm_kernel.manager.interrupt_kernel()
    reply = client.get_shell_msg(timeout=60)  # far less than the 100 s the cell would take
    assert reply["parent_header"]["msg_id"] == request
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    # The interrupted container is gone: nothing left in the guest's labkit home.
    # The helper tears an exited container down after it has reported the exit (issue 25):
    # settle() waits for that, as every leak check does.
    past_the_abort(client, timeout=CELL_TIMEOUT)
    vm_kernel.value("__import__('labkit.runtime.client.helper_client', fromlist=['settle']).settle()")
    left = vm_kernel.value("sorted(os.listdir(os.path.join(os.environ['LABKIT_HOME'], 'containers')))")
    assert left == []


@vm_test
def test_vm_kernel_restart_starts_a_new_kernel_in_the_same_guest(vm_kernel):
    before = vm_kernel.value("os.getpid()")
    qemu = vm_kernel.qemu_pid
    vm_kernel.manager.restart_kernel()
    vm_kernel.client.wait_for_ready(timeout=STARTUP_TIMEOUT)
    assert vm_kernel.qemu_pid == qemu, "restart rebooted the guest"
    assert vm_kernel.value("os.getpid()") != before
    assert vm_kernel.value("'container' in get_ipython().magics_manager.magics['cell']")


def _restored_kernel(tmp_path, name):
    notebooks = tmp_path / name
    notebooks.mkdir()
    kernel = VMKernel(tmp_path / f"kernels-{name}", notebooks)
    kernel.notebooks = notebooks
    kernel.first_output = kernel.run("pass")[1]
    return kernel


def _shut_down(kernel):
    qemu, workdir = kernel.qemu_pid, kernel.manager.provisioner.guest.workdir
    kernel.client.stop_channels()
    kernel.manager.shutdown_kernel()
    assert not os.path.exists(f"/proc/{qemu}"), f"QEMU (pid {qemu}) still runs after shutdown"
    assert not workdir.exists(), f"{workdir} left behind"


@vm_test
def test_vm_kernels_restored_from_the_snapshot_are_fresh_and_see_the_hosts_root(vm_kernel, tmp_path):
    """The module's kernel saved its warm guest (or restored one saved earlier): the next
    kernels restore it, one at a time. Each sees the host's whole root (not just the files
    the snapshot holds), its own notebooks, the host's clock and a random pool of its own:
    without the reseed both would draw the same bytes (they resume the same memory)."""
    from labkit.vm import provisioner, snapshot

    guest = vm_kernel.manager.provisioner.guest
    saved = snapshot.newest()
    assert saved is not None, "the module's kernel neither saved nor restored a guest"
    plan = provisioner.snapshot_plan(1024, 2, guest.acceleration, vm_kernel.notebooks)
    assert plan.restore == saved, "the same inputs must find the same snapshot"
    assert provisioner.snapshot_plan(1536, 2, guest.acceleration, vm_kernel.notebooks).restore is None, \
        "a guest of another size must not be restored"

    drawn = []
    for name in ("first", "second"):
        kernel = _restored_kernel(tmp_path, name)
        try:
            assert kernel.manager.provisioner.guest.how == "restored from a snapshot"
            assert "restored from a snapshot in" in kernel.first_output
            assert kernel.value("os.path.exists(" + repr(__file__) + ")"), "the host's root is not mounted"
            assert kernel.value("os.getcwd()") == str(kernel.notebooks)
            content, printed = kernel.run("open('restored.txt', 'w').write('written inside')")
            assert content["status"] == "ok", printed
            assert (kernel.notebooks / "restored.txt").read_text() == "written inside"
            assert kernel.value("os.uname().nodename") == os.uname().nodename
            assert abs(kernel.value("__import__('time').time()") - time.time()) < 30, "the clock was not resynced"
            drawn.append(kernel.value("os.urandom(16).hex()"))
            content, printed = kernel.run("%%container\ncat /proc/self/cgroup")
            assert content["status"] == "ok", printed
            assert "0::/" in printed
        finally:
            _shut_down(kernel)
    assert drawn[0] != drawn[1], "two kernels restored from one snapshot drew the same random bytes"


@vm_test
def test_vm_kernel_shutdown_leaves_no_qemu(vm_kernel):
    """Last of the booting tests: it shuts the module's kernel down."""
    qemu, workdir = vm_kernel.qemu_pid, vm_kernel.manager.provisioner.guest.workdir
    vm_kernel.client.stop_channels()
    vm_kernel.manager.shutdown_kernel()
    assert not os.path.exists(f"/proc/{qemu}"), f"QEMU (pid {qemu}) still runs after shutdown"
    assert not workdir.exists(), f"{workdir} left behind"
    assert leftovers_of(os.getpid()) == ([], []), "a VM kernel left a QEMU process or its temp dir behind"


# --- without booting --------------------------------------------------------------


def test_agent_refuses_a_request_without_the_token():
    agent = Agent("s3cret")
    assert agent.answer({"op": "hello"}) == {"error": "bad token"}
    assert agent.answer({"op": "hello", "token": "guess"}) == {"error": "bad token"}
    assert agent.answer({"op": "start", "token": "s3cret-not"}) == {"error": "bad token"}
    assert agent.answer({"op": "hello", "token": "s3cret"}) == {"ok": True}
    assert "unknown op" in agent.answer({"op": "rm", "token": "s3cret"})["error"]


def test_vm_kernelspec_names_the_provisioner_and_the_same_kernel_command(tmp_path):
    from importlib.metadata import entry_points

    from labkit.kernelspec import VM_PROVISIONER, spec_for

    spec = json.loads((write_spec(tmp_path / "vm", vm=True) / "kernel.json").read_text())
    local = spec_for()["argv"]
    assert spec["argv"] == local[local.index("--") + 1:]    # the same kernel, without `labkit unshare`
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == VM_PROVISIONER
    assert spec["interrupt_mode"] == "signal"
    found = {point.name: point.value for point in entry_points(group="jupyter_client.kernel_provisioners")}
    assert found.get(VM_PROVISIONER) == "labkit.vm.provisioner:LabkitVMProvisioner", \
        "the provisioner's entry point is not installed: reinstall labkit (make setup)"


def test_labkit_lab_vm_gives_the_notebooks_labkit_kernel_the_vm(tmp_path):
    """The notebooks name the `labkit` kernel: under `labkit lab --vm` that name must
    start the VM kernel, and the host's own spec must not win."""
    from jupyter_client.kernelspec import KernelSpecManager

    from labkit.kernelspec import KERNEL_NAME, VM_DISPLAY_NAME
    from labkit.lab import lab_environment, write_vm_specs

    environment = lab_environment("token", write_vm_specs(tmp_path))
    assert environment["JUPYTER_PATH"].split(os.pathsep)[0] == str(tmp_path)
    found = subprocess.run(
        [sys.executable, "-c", "from jupyter_client.kernelspec import KernelSpecManager as M; "
                               f"print(M().get_kernel_spec({KERNEL_NAME!r}).display_name)"],
        env=environment, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == VM_DISPLAY_NAME
    assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).display_name != VM_DISPLAY_NAME  # ours is untouched


def test_a_python_below_tmp_is_refused_with_the_reason_not_booted():
    # The guest mounts a /tmp of its own: a venv below /tmp is not there (a boot would end in
    # "env: can't execute ..."), so the kernel says why before booting anything.
    assert "mounts its own /tmp" in hidden_in_the_guest("/tmp/clone/.venv/bin/python")
    assert hidden_in_the_guest("/work/labkit/.venv/bin/python") is None
    assert hidden_in_the_guest("/tmpfoo/.venv/bin/python") is None


def test_a_warm_start_forks_a_kernel_that_answers_and_is_signalled_as_its_own_session(tmp_path):
    # The fork must come from a process like the agent: fresh, its modules imported. Forked
    # from a pytest process that has run hundreds of tests (their threads, helpers and handlers
    # inherited), the kernel died before its first reply in a full run: the test itself runs
    # in a fresh interpreter.
    if not os.environ.get("LABKIT_WARM_START_TEST_INSIDE"):
        name = "test_a_warm_start_forks_a_kernel_that_answers_and_is_signalled_as_its_own_session"
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                               "--basetemp", str(tmp_path / "inside"), f"{__file__}::{name}"],
                              env={**os.environ, "LABKIT_WARM_START_TEST_INSIDE": "1"},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
        return
    """The agent's warm path, on the host (no VM): modules imported first, then a fork runs
    `python -m ipykernel_launcher` in the child; the kernel answers a cell with the
    environment, cwd and argv it was given, SIGINT to its session interrupts a cell, and its
    exit is seen by poll(). Connection on 127.0.0.1 (the agent writes 0.0.0.0 only in the guest)."""
    import signal as signals

    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    connection_file, _ = write_connection_file(str(tmp_path / "kernel.json"), ip="127.0.0.1")
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file, "--ext", "labkit"]
    assert warm_start_possible(argv)
    assert not warm_start_possible(["/usr/bin/env", "-m", "ipykernel_launcher"])
    assert not warm_start_possible([sys.executable, "-c", "pass"])
    assert Warm().ready()
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "LABKIT_WARM_PROBE": "given"}
    env.pop("JPY_PARENT_PID", None)
    kernel = fork_kernel(argv, env, str(work))
    client = BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        seen = []
        reply = client.execute_interactive(
            "import os, sys\nprint(os.environ['LABKIT_WARM_PROBE'], os.getcwd(), os.getsid(0) == os.getpid(),"
            " 'container' in get_ipython().magics_manager.magics['cell'])",
            timeout=60, output_hook=lambda m: seen.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok"
        assert "".join(seen).split() == ["given", str(work), "True", "True"]
        assert kernel.poll() is None
        request = client.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(100)")
        while True:
            message = client.get_iopub_msg(timeout=60)
            if message["msg_type"] == "stream" and "sleeping" in message["content"]["text"]:
                break
        os.killpg(kernel.pid, signals.SIGINT)
        reply = client.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == request
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        client.shutdown()
        deadline = time.monotonic() + 60
        while kernel.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kernel.poll() == 0
    finally:
        client.stop_channels()
        if kernel.poll() is None:
            os.killpg(kernel.pid, signals.SIGKILL)
            os.waitpid(kernel.pid, 0)


def test_a_failed_start_in_the_guest_stops_the_guest():
    """jupyter_client cleans nothing up after a failed launch: the provisioner must stop the
    guest it booted, or QEMU runs on for as long as the server does."""
    import asyncio
    from types import SimpleNamespace

    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager

    from labkit.vm.provisioner import LabkitVMProvisioner

    class Unanswering:
        qemu = SimpleNamespace(exited=False)
        booted_seconds, acceleration, how = 1.0, SimpleNamespace(name="tcg", reason="test"), "booted"
        stopped = False

        async def request(self, op, timeout=10.0, **fields):
            raise asyncio.TimeoutError()

        def stop(self):
            self.stopped = True

    guest = Unanswering()
    provisioner = LabkitVMProvisioner(kernel_id="k", kernel_spec=KernelSpec(argv=[sys.executable]),
                                      parent=KernelManager(connection_file="/nonexistent.json"))
    provisioner.connection_info = {"key": b"k"}
    provisioner.guest = guest
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(provisioner.launch_kernel([sys.executable, "-m", "ipykernel_launcher"], env={}, cwd="/"))
    assert guest.stopped and provisioner.guest is None


def test_the_vm_kernelspec_starts_the_launcher_bare_so_the_agent_can_fork_it_warm():
    """The local spec goes through `labkit unshare` (rootless); the VM spec must not, or the
    guest's agent would start every kernel cold (warm_start_possible wants `PYTHON -m
    ipykernel_launcher`)."""
    from labkit.kernelspec import spec_for
    from labkit.vm.agent import warm_start_possible

    local, vm = spec_for(sys.executable), spec_for(sys.executable, vm=True)
    assert "unshare" in local["argv"]
    assert warm_start_possible(vm["argv"], python=sys.executable), vm["argv"]
    assert not warm_start_possible(local["argv"], python=sys.executable)


def test_processes_in_the_guest_give_a_cold_helper_longer_than_a_hosts_30_s():
    """Under emulation on a busy host a cold helper in the guest takes minutes to answer its
    first ping: the guest's processes (labkit vm run, --sandbox vm, the VM kernel) get a
    longer LABKIT_HELPER_TIMEOUT (read by helper_client), a setting of their own kept."""
    import asyncio
    from types import SimpleNamespace

    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager

    from labkit.vm import machine
    from labkit.vm.provisioner import LabkitVMProvisioner

    assert float(machine._guest_environment({})["LABKIT_HELPER_TIMEOUT"]) > 30
    assert machine._guest_environment({"LABKIT_HELPER_TIMEOUT": "900"})["LABKIT_HELPER_TIMEOUT"] == "900"

    class Recording:  # a guest that records the start request instead of booting
        qemu = SimpleNamespace(exited=False)
        booted_seconds, acceleration, how = 1.0, SimpleNamespace(name="tcg", reason="test"), "booted"

        async def request(self, op, timeout=10.0, **fields):
            self.env = fields["env"]
            return {"pid": 1, "warm": True}

    def kernel_environment(env):
        guest = Recording()
        provisioner = LabkitVMProvisioner(kernel_id="k", kernel_spec=KernelSpec(argv=[sys.executable]),
                                          parent=KernelManager(connection_file="/nonexistent.json"))
        provisioner.connection_info = {"key": b"k"}
        provisioner.guest = guest
        asyncio.run(provisioner.launch_kernel([sys.executable, "-m", "ipykernel_launcher"], env=env, cwd="/"))
        return guest.env

    assert kernel_environment({}).get("LABKIT_HELPER_TIMEOUT") == machine.GUEST_DEFAULTS["LABKIT_HELPER_TIMEOUT"]
    assert kernel_environment({"LABKIT_HELPER_TIMEOUT": "900"})["LABKIT_HELPER_TIMEOUT"] == "900"
