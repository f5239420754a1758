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

import pytest

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
