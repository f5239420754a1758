"""No path to the host's binaries: what a container reaches through /proc/self/exe (and
/proc/PID/exe of a process that joins it) is a sealed copy of the interpreter, never the
host's file (CVE-2019-5736). First the kernel's behaviour on a throw-away copy of the
interpreter (the write goes through to an unsealed file, and the seals refuse it), then
through labkit's run and exec, as root on the real kernel."""

import errno
import os
import shutil
import subprocess
import sys
import time

import pytest

from labkit.linux import sealed_exe
from labkit.linux.sealed_exe import sealed_copy

INTERPRETER = os.path.realpath(sys.executable)
IDLE = ["-S", "-c", "import sys; sys.stdin.read()"]   # runs until its stdin closes


@pytest.fixture
def throwaway_python(tmp_path):
    copy = tmp_path / "python"
    shutil.copy2(INTERPRETER, copy)
    return copy


def running(argv, executable=None, pass_fds=()):
    env = dict(os.environ, PYTHONHOME=sys.base_prefix)  # argv[0] may be a copy away from its prefix
    return subprocess.Popen(argv, executable=executable, pass_fds=pass_fds, env=env, stdin=subprocess.PIPE)


def hold_exe_until_it_exits(process) -> int:
    """What an attacker in the container does: open /proc/PID/exe while PID runs, keep the
    fd, and wait for the file to be busy no more. Returns the fd."""
    held = os.open(f"/proc/{process.pid}/exe", os.O_RDONLY)
    with pytest.raises(OSError) as busy:
        os.open(f"/proc/self/fd/{held}", os.O_WRONLY)
    assert busy.value.errno == errno.ETXTBSY  # while it runs, only "text file busy" is in the way
    process.stdin.close()
    process.wait(timeout=30)
    return held


def test_without_a_seal_a_write_through_proc_pid_exe_reaches_the_file(throwaway_python):
    process = running([str(throwaway_python), *IDLE])
    held = hold_exe_until_it_exits(process)
    try:
        writable = os.open(f"/proc/self/fd/{held}", os.O_WRONLY)
        os.write(writable, b"X")
        os.close(writable)
    finally:
        os.close(held)
    assert throwaway_python.read_bytes()[:1] == b"X"   # the binary on disk changed


def test_a_sealed_copy_refuses_the_same_write(throwaway_python):
    original = throwaway_python.read_bytes()
    copy = sealed_copy(str(throwaway_python))
    try:
        process = running([str(throwaway_python), *IDLE], executable=f"/proc/self/fd/{copy}", pass_fds=(copy,))
        assert os.readlink(f"/proc/{process.pid}/exe").startswith("/memfd:labkit-python")
        held = hold_exe_until_it_exits(process)
    finally:
        os.close(copy)
    try:
        with pytest.raises(OSError) as refused:
            writable = os.open(f"/proc/self/fd/{held}", os.O_WRONLY)
            try:
                os.write(writable, b"X")
            finally:
                os.close(writable)
        assert refused.value.errno == errno.EPERM   # the seal, not a busy file
    finally:
        os.close(held)
    assert throwaway_python.read_bytes() == original


# --- through labkit: run and exec ---------------------------------------------------------

# What the image's /bin/evil (a symlink to /proc/self/exe) reports from inside: where the
# link leads, what opening it for writing gives, and the file's seals (F_GET_SEALS).
PROBE = """
import errno, fcntl, os, sys
def probe(exe):
    try:
        os.close(os.open(exe, os.O_WRONLY))
        write = "opened"
    except OSError as error:
        write = errno.errorcode[error.errno]
    fd = os.open(exe, os.O_RDONLY)
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as error:
        seals = errno.errorcode[error.errno]
    print(os.readlink(exe), write, seals, os.read(fd, 4) == b"\\x7fELF", flush=True)
"""
SEALED = 0x1 | 0x2 | 0x4 | 0x8   # F_SEAL_SEAL | SHRINK | GROW | WRITE


@pytest.fixture
def evil_image(labkit_home, tmp_path):
    """busybox with /bin/evil -> /proc/self/exe (the CVE-2019-5736 entry point)."""
    from labkit.images import commit, get_image

    upper = tmp_path / "evil-upper"
    (upper / "bin").mkdir(parents=True)
    os.symlink("/proc/self/exe", upper / "bin" / "evil")
    return commit(upper, get_image("busybox"), "evil")


def evil_spec(command, **options):
    from labkit.runtime import ContainerSpec

    # --python: the interpreter's libraries at their host paths, so that the host's
    # interpreter, reached through the link, runs inside
    return ContainerSpec(image="evil", command=command, python=True, env=[f"PYTHONHOME={sys.base_prefix}"], **options)


def parse(line):
    target, write, seals, elf = line.rsplit(" ", 3)
    return target, write, seals, elf


@pytest.mark.root
def test_a_container_running_proc_self_exe_gets_a_sealed_copy_not_the_hosts_file(evil_image, no_leftovers):
    from labkit.runtime import Container

    result = Container(evil_spec(["/bin/evil", "-S", "-c", PROBE + "probe('/proc/self/exe')"])).run()
    assert result.exit_code == 0, result.stderr
    target, write, seals, elf = parse(result.stdout.strip())
    assert elf == "True"                       # it runs the interpreter, and may read it ...
    assert target.startswith("/memfd:labkit-python"), target   # ... a copy, not the host's file
    assert write in ("ETXTBSY", "EPERM") and int(seals) & SEALED == SEALED


@pytest.mark.root
def test_a_joined_process_seen_through_proc_pid_exe_is_a_sealed_copy_too(evil_image, no_leftovers):
    import threading

    from labkit.runtime import Container

    watcher = PROBE + """
import time
while True:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"joined-marker" in open(f"/proc/{pid}/cmdline", "rb").read():
                probe(f"/proc/{pid}/exe")
                sys.exit(0)
        except OSError:
            pass
    time.sleep(0.02)
"""
    container = Container(evil_spec(["/bin/evil", "-S", "-c", watcher]))
    container.start(detach=True)
    try:
        joined = threading.Thread(target=container.exec, daemon=True, args=(
            ["/bin/evil", "-S", "-c", "import time; time.sleep(60)", "joined-marker"],), kwargs={"timeout": 60})
        joined.start()
        deadline = time.monotonic() + 60
        while container.poll() == "running":
            assert time.monotonic() < deadline, "the watcher never saw the joined process"
            time.sleep(0.05)
        target, write, seals, elf = parse(container.logs().strip().splitlines()[-1])
        assert target.startswith("/memfd:labkit-python"), (target, container.logs())
        assert write in ("ETXTBSY", "EPERM") and int(seals) & SEALED == SEALED
    finally:
        container.remove()
    joined.join(timeout=60)


@pytest.mark.root
def test_the_helper_runs_from_the_sealed_copy(labkit_home):
    from labkit.linux.sealed_exe import running_sealed
    from labkit.runtime import Container, ContainerSpec
    from labkit.runtime.client.helper_client import get_helper

    Container(ContainerSpec(command="true")).run().check()
    assert running_sealed(get_helper().pid)


@pytest.mark.root
def test_labkit_run_whose_helper_is_its_own_fork_runs_it_sealed_too(evil_image, no_leftovers):
    ran = subprocess.run([sys.executable, "-m", "labkit.cli", "run", "--image", "evil", "--python",
                          "-e", f"PYTHONHOME={sys.base_prefix}", "--", "/bin/evil", "-S", "-c",
                          PROBE + "probe('/proc/self/exe')"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    target, write, seals, elf = parse(ran.stdout.strip())
    assert target.startswith("/memfd:labkit-python") and int(seals) & SEALED == SEALED, ran.stdout


# --- a shared libpython -------------------------------------------------------------------

def libpython_or_skip() -> str:
    library = next((line.split()[5] for line in open("/proc/self/maps")
                    if len(line.split()) >= 6 and os.path.basename(line.split()[5]).startswith("libpython")), None)
    if library is None:
        pytest.skip(f"{INTERPRETER} is linked statically (no shared libpython to seal), as Debian's python3")
    return library


READY_THEN_IDLE = ["-S", "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]


def mapped(pid, name) -> str:
    """/proc/PID/map_files/START-END of the first mapping of a file whose path holds `name`."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and name in fields[5]:
                return f"/proc/{pid}/map_files/{fields[0]}"
    raise AssertionError(f"process {pid} maps no {name}")


def write_through(link) -> None:
    writable = os.open(link, os.O_WRONLY)
    try:
        os.write(writable, b"X")
    finally:
        os.close(writable)


@pytest.mark.root  # /proc/PID/map_files: CAP_SYS_ADMIN, as a --privileged or --cap-add SYS_ADMIN container has
def test_without_a_seal_a_running_processs_mapped_libpython_can_be_written(tmp_path):
    # "Text file busy" guards a running binary, not a library it maps: the write lands while
    # the process runs (here a throw-away copy, preloaded as the sealed one is)
    library = tmp_path / os.path.basename(libpython_or_skip())
    shutil.copy2(libpython_or_skip(), library)
    env = dict(os.environ, PYTHONHOME=sys.base_prefix, LD_PRELOAD=str(library))
    process = subprocess.Popen([INTERPRETER, *READY_THEN_IDLE], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"ready\n"
        write_through(mapped(process.pid, str(library)))
        assert library.read_bytes()[:1] == b"X"   # the library on disk changed under a running process
    finally:
        process.stdin.close()
        process.wait(timeout=30)


@pytest.mark.root
def test_the_sealed_interpreters_libpython_is_a_sealed_copy_that_refuses_the_write():
    from labkit.linux import sealed_exe

    host_library = libpython_or_skip()
    process = subprocess.Popen([sys.executable, *READY_THEN_IDLE], executable=sealed_exe.exec_path(),
                               env=sealed_exe.exec_environment(os.environ), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"ready\n"
        maps = open(f"/proc/{process.pid}/maps").read()
        assert host_library not in maps and "/memfd:labkit-libpython" in maps
        with pytest.raises(OSError) as refused:
            write_through(mapped(process.pid, "/memfd:labkit-libpython"))
        assert refused.value.errno == errno.EPERM   # the seal
    finally:
        process.stdin.close()
        process.wait(timeout=30)


@pytest.mark.root
def test_the_helper_and_labkit_run_map_no_host_libpython(labkit_home, no_leftovers):
    from labkit.runtime import Container, ContainerSpec
    from labkit.runtime.client.helper_client import get_helper

    host_library = libpython_or_skip()
    Container(ContainerSpec(command="true")).run().check()
    helper = get_helper().pid
    assert host_library not in open(f"/proc/{helper}/maps").read()
    assert "/memfd:labkit-libpython" in open(f"/proc/{helper}/maps").read()
    # labkit run, executed again from the sealed interpreter (and its helper, a fork of it);
    # the container's command gets no LD_PRELOAD
    run = subprocess.Popen([sys.executable, "-m", "labkit.cli", "run", "--", "sh", "-c",
                            "env | grep -c LD_PRELOAD; read line"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline() == "0\n"   # the container has started, without LD_PRELOAD
        maps = open(f"/proc/{run.pid}/maps").read()
        assert host_library not in maps and "/memfd:labkit-libpython" in maps
        assert "LD_PRELOAD" not in run.communicate("done\n", timeout=60)[1]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_the_sealed_libpython_holds_what_the_loader_maps_and_leaves_out_what_it_never_reads(tmp_path):
    """Its segments byte for byte (an ELF header without section headers, as `sstrip`
    leaves a file); the debug information and symbol table after them stay out; a copy
    of the same file with anything else after its sections (an appended archive) is
    copied whole."""
    library = libpython_or_skip()
    host = open(library, "rb").read()
    if b".symtab" not in host[-65536:]:   # the section names, at the end: none but the loaded ones
        pytest.skip(f"{library} is stripped: nothing past its segments to leave out")
    fd = sealed_copy(library, "test-libpython")
    try:
        copy = os.pread(fd, len(host), 0)
    finally:
        os.close(fd)
    assert len(copy) < len(host)
    assert copy[64:] == host[64:len(copy)] and copy[:0x28] == host[:0x28]
    assert copy[0x28:0x30] == bytes(8) and copy[0x3C:0x40] == bytes(4)   # e_shoff, e_shnum, e_shstrndx
    # (that the sealed interpreter runs on such a copy: every test above that starts one)
    appended = tmp_path / "appended.so"
    appended.write_bytes(host + b"PK\x05\x06" + bytes(18))   # an empty zip's end record, after the sections
    fd = sealed_copy(str(appended), "test-appended")
    try:
        assert os.fstat(fd).st_size == len(host) + 22
    finally:
        os.close(fd)


def test_a_seal_the_kernel_refuses_for_a_moment_is_tried_again():
    """Sealing against writes fails with EBUSY while something else holds the file's pages
    (here a writable shared mapping, let go 0.1 s later; in a loaded fresh clone, a page
    held a moment by reclaim): tried again, it is sealed. The same call without a retry
    fails, which shows the refusal is real."""
    import fcntl
    import mmap
    import threading

    fd = os.memfd_create("labkit-seal-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"x" * 4096)
        mapping = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_WRITE)
        with pytest.raises(OSError) as refused:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, sealed_exe.SEALS)
        assert refused.value.errno == errno.EBUSY
        threading.Timer(0.1, mapping.close).start()
        sealed_exe._seal(fd)
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        with pytest.raises(PermissionError):
            os.write(fd, b"y")
    finally:
        os.close(fd)
