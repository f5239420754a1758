"""`labkit doctor` for an ordinary user (uid 65534 through setpriv, as a student on a
shared machine): what works rootless, what does not, and why. Each claim doctor makes is
checked against what the kernel really lets that user do."""

import errno
import json
import os
from pathlib import Path

import pytest
from ordinary_user import NOBODY, OrdinaryUser

from labkit.cgroups import detect_mode
from labkit.cgroups.v1 import controller_mounts
from labkit.cgroups.v2 import unified_mount
from labkit.doctor import LIMIT_CONTROLLERS
from labkit.linux import syscalls
from labkit.linux.namespaces import lookup

pytestmark = pytest.mark.root  # becoming another user takes root

REQUIRED_KINDS = ("mnt", "uts", "ipc", "pid", "net", "cgroup")

DIAGNOSE = """
import dataclasses, json
from labkit.doctor import diagnose, format_table
rows = diagnose()
print(json.dumps({"rows": [dataclasses.asdict(row) for row in rows], "table": format_table(rows)}))
"""

UNSHARE = """
import sys
from labkit.linux import syscalls
try:
    syscalls.unshare(int(sys.argv[1]))
    print(0)
except OSError as error:
    print(error.errno)
"""

# Binder's situation: an ordinary uid, no capabilities, Docker's default seccomp profile
# (labkit's own copy), loaded as any unprivileged process may: after no_new_privs.
UNDER_DOCKER_SECCOMP = """
import sys
from labkit.linux import seccomp, syscalls
from labkit.linux.capabilities import CONTAINER_DEFAULT
from labkit.security.default_seccomp import default_profile
program = seccomp.Profile.from_json(default_profile()).compile(CONTAINER_DEFAULT)
syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
seccomp.load_filter(program)
from labkit.cli import command
sys.argv = ["labkit", "doctor"]
command()
"""


@pytest.fixture(scope="module")
def nobody():
    user = OrdinaryUser()
    try:
        yield user
    finally:
        user.remove()


@pytest.fixture(scope="module")
def doctor_as_nobody(nobody):
    """({row name: row as a dict}, the printed table) of `labkit doctor` run as uid 65534."""
    done = nobody.run("-c", DIAGNOSE)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    return {row["what"]: row for row in report["rows"]}, report["table"]


def unshare_as(user, flags) -> int:
    """0 when `user` may unshare(flags) in a fresh process, else the errno."""
    done = user.run("-c", UNSHARE, str(flags))
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_namespaces_that_work_inside_a_user_namespace_are_not_marked_missing(nobody, doctor_as_nobody):
    if unshare_as(nobody, syscalls.CLONE_NEWUSER) != 0:
        pytest.skip("this host refuses ordinary users a user namespace: nothing works rootless here")
    rows, table = doctor_as_nobody
    for kind in REQUIRED_KINDS:
        flag = lookup(kind).flag
        # By itself the kind is refused (what doctor used to probe, and mark MISSING) ...
        assert unshare_as(nobody, flag) == errno.EPERM, kind
        # ... together with a user namespace it is made, as a rootless container makes it.
        assert unshare_as(nobody, syscalls.CLONE_NEWUSER | flag) == 0, kind
        assert rows[f"namespace {kind}"]["ok"], rows[f"namespace {kind}"]
        assert "inside your user namespace" in rows[f"namespace {kind}"]["detail"]
    assert rows["rootless"]["ok"] and f"uid {NOBODY}" in rows["rootless"]["detail"]
    assert "MISSING" not in table


def test_labkit_doctor_exits_0_for_an_ordinary_user_who_can_make_containers(nobody):
    if unshare_as(nobody, syscalls.CLONE_NEWUSER) != 0:
        pytest.skip("this host refuses ordinary users a user namespace")
    done = nobody.run("-m", "labkit.cli", "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "namespace net       ok" in done.stdout


@pytest.mark.skipif(detect_mode() != "v1", reason="the cgroup v1 case; v2 delegation is the test below")
def test_cgroup_v1_controllers_the_user_cannot_write_are_not_ok(nobody, doctor_as_nobody):
    rows, _ = doctor_as_nobody
    mounts = controller_mounts()
    for kind, hierarchy in LIMIT_CONTROLLERS.items():
        if hierarchy not in mounts:
            continue
        # The kernel's answer: the user cannot make a cgroup where it sits.
        attempt = nobody.run("-c", "import os; from labkit.doctor import own_cgroup_dir; "
                                   f"os.mkdir(own_cgroup_dir({hierarchy!r}, {mounts[hierarchy]!r}) / 'labkit-probe')")
        assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt.stderr
        row = rows[f"cgroup {kind}"]
        assert not row["ok"] and row["mark"] == "off", row
        assert f"uid {NOBODY} can write no cgroup" in row["detail"] and f"without {kind} limits" in row["detail"]
        assert "Delegate=yes" in row["fix"] and "labkit lab --vm" in row["fix"]


V2_ROWS = """
import json, sys
from labkit.doctor import delegated_subtree, rootless_limits_v2
subtree = delegated_subtree(sys.argv[1])
print(json.dumps({"directory": str(subtree[0]), "writable": subtree[1], "controllers": sorted(subtree[2]),
                  "rows": [row.__dict__ for row in rootless_limits_v2(subtree)]}))
"""


def test_a_delegated_cgroup_v2_subtree_is_told_apart_from_one_the_user_cannot_write(nobody):
    """The same process, in the same cgroup (a leaf below a parent), before and after root
    hands both to the user as systemd's Delegate=yes does (the directory, cgroup.procs,
    cgroup.subtree_control and cgroup.threads chowned): doctor must follow what the kernel
    then allows, and name the directory the runtime makes its cgroups in, the highest one
    delegated (labkit.cgroups.delegation), not the process's own."""
    mount = unified_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted on this host")
    parent = Path(mount) / f"labkit-doctor-test-{os.getpid()}"
    leaf = parent / "leaf"
    leaf.mkdir(parents=True)
    join = lambda: (leaf / "cgroup.procs").write_text(str(os.getpid()))  # noqa: E731 — as root, before setpriv

    def doctor_and_kernel(where):
        done = nobody.run("-c", V2_ROWS, mount, preexec_fn=join)
        assert done.returncode == 0, done.stderr
        made = nobody.run("-c", "import os, sys; os.mkdir(sys.argv[1])", str(where / "child"), preexec_fn=join)
        return json.loads(done.stdout), made.returncode == 0

    try:
        before, could_make = doctor_and_kernel(leaf)
        assert not could_make and not before["writable"] and before["directory"] == str(leaf)
        for row in before["rows"]:
            assert not row["ok"] and row["mark"] == "off" and f"cannot write its cgroup {leaf}" in row["detail"], row
        for cgroup in (parent, leaf):
            for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                os.chown(cgroup / name, NOBODY, NOBODY)
        after, could_make = doctor_and_kernel(parent)
        assert could_make and after["writable"] and after["directory"] == str(parent)
        for row in after["rows"]:
            kind = row["what"].removeprefix("cgroup ")
            if kind in after["controllers"]:  # ok once the runtime makes its cgroups there
                assert f"delegated to uid 65534 in {parent}" in row["detail"], row
            else:
                assert not row["ok"] and f"{parent} is delegated" in row["detail"] and f"lacks {kind}" in row["detail"], row
    finally:
        for cgroup in (parent / "child", leaf / "child", leaf, parent):
            if cgroup.exists():
                cgroup.rmdir()


def test_binder_is_never_offered_as_a_place_to_be_root(nobody, doctor_as_nobody):
    _, table = doctor_as_nobody
    confined = nobody.run("-c", UNDER_DOCKER_SECCOMP)
    assert confined.returncode == 1, confined.stdout + confined.stderr  # nothing can be made there
    # Under Binder's filter the user namespace is refused: doctor names the filter and
    # offers the VM kernel, the one way to containers there.
    rootless_line = next(line for line in confined.stdout.splitlines() if line.startswith("rootless"))
    assert "MISSING" in rootless_line and "Seccomp: 2" in rootless_line
    assert "labkit lab --vm" in confined.stdout
    for text in (table, confined.stdout):
        assert "where you are root" not in text and "Binder image" not in text
        for line in text.splitlines():
            if "binder" in line.lower():
                assert "never gives root" in line and "labkit lab --vm" in line, line


def test_vm_setup_is_said_to_need_root_only_for_its_apt_step(nobody, doctor_as_nobody):
    rows, _ = doctor_as_nobody
    vm = rows["virtual machines"]
    assert "as root" not in vm["detail"] + vm["fix"], vm
    if not vm["ok"]:
        assert "labkit vm setup" in vm["fix"] and "no root needed" in vm["fix"], vm
    # Where QEMU is missing, the apt step is named as root's and the rest as the user's own.
    fix = nobody.run("-c", "from labkit.vm.status import VMStatus; "
                           "print(VMStatus(False, 'tcg', '', None, None, ['qemu'], ['qemu-system-x86', 'kmod']).fix)")
    assert fix.stdout.strip() == ("only its apt step needs root: sudo apt-get install qemu-system-x86 kmod; "
                                  "then, as yourself, labkit vm setup (downloads a kernel into your LABKIT_HOME)")
    as_root = _status_missing_qemu().fix
    assert as_root.startswith("labkit vm setup (installs qemu-system-x86 kmod with apt-get")


def _status_missing_qemu():
    from labkit.vm.status import VMStatus

    return VMStatus(False, "tcg", "", None, None, ["qemu"], ["qemu-system-x86", "kmod"])


def test_the_rootless_network_row_says_what_works_with_the_programs_found(nobody, doctor_as_nobody):
    import shutil

    from labkit.net.rootless_bridge import nft_program

    rows, _ = doctor_as_nobody
    row = rows["rootless network"]
    # nft lives in /usr/sbin, which an ordinary user's PATH may not name: found all the same
    assert row["ok"] == bool(shutil.which("pasta") and nft_program()), row
    if row["ok"]:
        assert "-p TCP ports, outbound through pasta" in row["detail"], row
    else:
        assert "apt-get install" in row["fix"], row
