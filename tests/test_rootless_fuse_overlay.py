"""Rootless containers whose root is served by fuse-overlayfs (LABKIT_OVERLAY=fuse), as on
a kernel that refuses overlay in a user namespace (before 5.11): a throw-away user runs a
container on the image, writes, deletes lower files and replaces a lower directory, commits,
and the committed image shows all of it; the FUSE daemon is not one of the container's
processes and ends with it, also when its owner is killed. Without the setting the
kernel's overlay is chosen on this kernel. Same pattern as tests/test_rootless.py."""

import dataclasses
import os
import time

import pytest
from test_rootless import a_student, nothing_left  # noqa: F401 — the fixture, for this module's student

from labkit.images.rootless_overlay import FUSE_PROGRAM, fuse_overlay_missing

pytestmark = pytest.mark.root

ROOT_FS_TYPE = "awk '$5 == \"/\" {print $(NF-2)}' /proc/self/mountinfo"


@pytest.fixture(scope="module")
def student():
    yield from a_student("lkfo", 65536)


@pytest.fixture
def fuse_student(nothing_left):  # noqa: F811
    missing = fuse_overlay_missing()
    if missing:
        pytest.skip(missing)
    yield dataclasses.replace(nothing_left, env={**nothing_left.env, "LABKIT_OVERLAY": "fuse"})
    with open("/proc/self/mountinfo") as table:
        assert FUSE_PROGRAM not in table.read()


def fuse_daemons_of(student) -> list:
    found = []
    for pid in student.processes():
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == FUSE_PROGRAM:
                    found.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


COMMIT = (
    "import sys\n"
    "from labkit.cli import enter_user_namespace_if_rootless\n"
    "enter_user_namespace_if_rootless()\n"
    "from labkit.runtime import Container, ContainerSpec\n"
    "c = Container(ContainerSpec(command=['sh', '-c', sys.argv[3]], image=sys.argv[1]))\n"
    "c.start(); c.wait()\n"
    "c.commit(sys.argv[2]); c.remove()\n"
)


def run_and_commit(student, image, new_image, command):
    done = student.run([student.python, "-c", COMMIT, image, new_image, command])
    assert done.returncode == 0, done.stderr


def test_a_fuse_root_is_written_deleted_and_committed(fuse_student):
    student = fuse_student
    out = student.ok("run", "--", "sh", "-c", f"{ROOT_FS_TYPE}; ps -o comm | grep -c {FUSE_PROGRAM}; true")
    assert out.split() == ["fuse.fuse-overlayfs", "0"]   # the daemon is not in the container
    run_and_commit(student, "busybox", "withdir", "mkdir /dir; echo a > /dir/a; echo b > /dir/b; "
                                                  "echo k > /keep; chown 1000:1000 /keep")
    # A lower file changed (copied up, its owner kept), one deleted, a lower directory replaced.
    run_and_commit(student, "withdir", "changed", "echo more >> /keep; echo new > /new; rm /bin/ls; "
                                                  "rm -r /dir; mkdir /dir; echo c > /dir/c")
    out = student.ok("run", "--image", "changed", "--", "sh", "-c",
                     "cat /new /keep; stat -c %u /keep; test -e /bin/ls && echo ls-still-there; ls -a /dir")
    assert out.split() == ["new", "k", "more", "1000", ".", "..", "c"]
    out = student.ok("run", "--image", "withdir", "--", "sh", "-c",
                     "cat /keep; ls /dir; test -e /bin/ls && echo has-ls")
    assert out.split() == ["k", "a", "b", "has-ls"]   # the image below is unchanged
    assert fuse_daemons_of(student) == []
    for image in ("changed", "withdir"):
        student.ok("image", "rm", image)


def test_the_fuse_daemon_ends_with_a_killed_owner(fuse_student):
    student = fuse_student
    script = (
        "import os\n"
        "from labkit.runtime import Container, ContainerSpec\n"
        "c = Container(ContainerSpec(command=['sh', '-c', 'touch /f; sleep 60'], name='orphan'))\n"
        "c.start()\n"
        "while c.exec(['test', '-f', '/f']).returncode: pass\n"
        "from labkit.runtime.client import helper_client\n"
        "def my_comm(pid):\n"
        "    try:\n"
        "        mine = os.stat(f'/proc/{pid}').st_uid == os.getuid()\n"
        "        return mine and open(f'/proc/{pid}/comm').read().strip()\n"
        "    except OSError:\n"
        "        return ''\n"
        f"print([my_comm(p) for p in os.listdir('/proc') if p.isdigit()].count('{FUSE_PROGRAM}'), flush=True)\n"
        "os.kill(helper_client.get_helper().pid, 9)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = student.python_script(script)
    assert done.stdout.split() == ["1"], done.stderr   # it ran, served by one daemon
    deadline = time.monotonic() + 10
    while student.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fuse_daemons_of(student) == []
    assert len(list((student.labkit_home / "containers").iterdir())) == 1   # the killed owner left it
    assert "container orphan" in student.ok("gc")


def test_a_userns_container_on_a_fuse_root_is_refused_clearly(fuse_student):
    done = fuse_student.labkit("run", "--userns", "--", "true")
    assert done.returncode != 0
    assert "--userns container needs the kernel's overlay" in done.stderr


def test_the_kernel_overlay_is_chosen_where_it_mounts_in_a_user_namespace(nothing_left):  # noqa: F811
    student = nothing_left
    assert student.ok("run", "--", "sh", "-c", ROOT_FS_TYPE).split() == ["overlay"]
    doctor = student.ok("doctor")
    assert "rootless overlay" in doctor and "the kernel's overlay: it mounts in a user namespace" in doctor
    forced = dataclasses.replace(student, env={**student.env, "LABKIT_OVERLAY": "fuse"})
    assert "fuse-overlayfs (LABKIT_OVERLAY=fuse)" in forced.ok("doctor")
