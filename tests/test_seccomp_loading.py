"""tests/test_seccomp.py skips only where libseccomp is really absent: each case runs that
file in a fresh pytest whose loader is changed by a small plugin (no root needed)."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

MISSING = '''
import ctypes, ctypes.util
real = ctypes.CDLL
def without_libseccomp(name, *args, **kwargs):
    if name and "seccomp" in str(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")
    return real(name, *args, **kwargs)
ctypes.CDLL = without_libseccomp
ctypes.util.find_library = lambda name: None
'''

BROKEN = '''
import labkit.linux.seccomp as seccomp
def declare_fails(lib):
    raise AttributeError("/usr/lib/libseccomp.so.2: undefined symbol: seccomp_init")
seccomp._declare = declare_fails
'''


def seccomp_tests_with(plugin_source, tmp_path):
    (tmp_path / "loader_plugin.py").write_text(plugin_source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "loader_plugin", "-q",
                           "-rs", str(TESTS / "test_seccomp.py")], capture_output=True, text=True, env=env,
                          cwd=TESTS.parent, timeout=300)


def test_a_missing_libseccomp_skips_the_seccomp_tests_and_says_why(tmp_path):
    done = seccomp_tests_with(MISSING, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" not in done.stdout and "failed" not in done.stdout and "error" not in done.stdout
    assert "apt-get install libseccomp2" in done.stdout


def test_a_libseccomp_that_fails_to_load_fails_the_seccomp_tests(tmp_path):
    done = seccomp_tests_with(BROKEN, tmp_path)
    assert done.returncode != 0
    assert "undefined symbol: seccomp_init" in done.stdout and "skipped" not in done.stdout
