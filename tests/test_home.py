"""LABKIT_HOME is private: no ordinary host user reaches what containers made in it
(a setuid-root copy of a binary in a read-write layer, above all). Real kernel, as root;
"an ordinary host user" is uid/gid 65534 (nobody), reached with setpriv."""

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit.errors import ConfigError
from labkit.home import labkit_home, open_for_user_namespace
from labkit.runtime import DEFAULT_NAMESPACES, Container, ContainerSpec
from labkit.runtime.spec import ROOT_USERNS_FIRST_ID

NOBODY = 65534
USERNS_ROOT = ROOT_USERNS_FIRST_ID   # the host uid/gid of root in a --userns container of the host's root


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def as_user(uid, gid, *command) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command],
                          capture_output=True, text=True, timeout=30)


def reach(path, uid=NOBODY, gid=NOBODY) -> subprocess.CompletedProcess:
    """stat `path` as another host user: 'MODE OWNER' of the file, or 'Permission denied'."""
    return as_user(uid, gid, "stat", "-c", "%a %u", str(path))


def test_a_new_home_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "fresh"))
    assert mode(labkit_home()) == 0o700


def test_a_home_left_open_by_an_older_labkit_is_tightened_on_first_use(tmp_path):
    home = tmp_path / "old"
    home.mkdir()
    os.chmod(home, 0o755)
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "ps"], capture_output=True, text=True,
                          env=dict(os.environ, LABKIT_HOME=str(home)), timeout=120)
    assert done.returncode == 0, done.stderr
    assert mode(home) == 0o700


@pytest.fixture
def setuid_copy(labkit_home):
    """A container that made a setuid-root copy of busybox in its read-write layer
    (removed after the test); yields the copy's host path."""
    container = Container(ContainerSpec(command="cp /bin/busybox /tmp/sush && chmod 4755 /tmp/sush"))
    try:
        container.run(remove=False).check()
        copy = container.upper_dir / "tmp" / "sush"
        st = os.stat(copy)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o4755, 0)
        yield copy
    finally:
        container.remove()


@pytest.mark.root
def test_another_host_user_cannot_reach_a_setuid_copy_in_a_read_write_layer(setuid_copy, labkit_home):
    assert mode(labkit_home) == 0o700
    refused = reach(setuid_copy)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


@pytest.mark.root
def test_with_a_0755_home_the_same_setuid_copy_is_within_reach(setuid_copy, labkit_home):
    for directory in (labkit_home, labkit_home / "containers"):
        os.chmod(directory, 0o755)  # what older labkit left: the defence is these modes
    reached = reach(setuid_copy)
    assert (reached.returncode, reached.stdout.strip()) == (0, "4755 0")


@pytest.mark.root
def test_a_setuid_file_committed_into_an_image_layer_is_out_of_reach_too(setuid_copy, labkit_home):
    from labkit.images import commit, get_image

    image = commit(setuid_copy.parent.parent, get_image("busybox"), "suid")
    in_layer = image.layer_dirs[-1] / "tmp" / "sush"
    assert (mode(in_layer), os.stat(in_layer).st_uid) == (0o4755, 0)
    assert "Permission denied" in reach(in_layer).stderr
    for directory in (labkit_home, labkit_home / "layers"):
        os.chmod(directory, 0o755)
    assert reach(in_layer).stdout.strip() == "4755 0"


@pytest.mark.root
def test_a_user_namespace_container_opens_the_home_to_its_own_root_only(labkit_home, no_leftovers):
    # In / : the read-write layer's own root, which this uid owns (no copy-up of a
    # root-owned lower directory, which overlay refuses in a user namespace).
    container = Container(ContainerSpec(command="cp /bin/busybox /sush && chmod 4755 /sush",
                                        namespaces=DEFAULT_NAMESPACES + ("user",)))
    try:
        container.run(remove=False).check()
        st = os.stat(labkit_home)
        for directory in (labkit_home, labkit_home / "containers", labkit_home / "layers"):
            st = os.stat(directory)
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, USERNS_ROOT), directory
        copy = container.upper_dir / "sush"
        assert reach(copy, USERNS_ROOT, USERNS_ROOT).stdout.strip() == f"4755 {USERNS_ROOT}"
        refused = reach(copy)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
    finally:
        container.remove()


@pytest.mark.root
def test_a_second_user_namespace_map_on_the_same_home_is_refused_by_name(labkit_home):
    open_for_user_namespace(labkit_home, USERNS_ROOT, USERNS_ROOT)
    with pytest.raises(ConfigError, match=f"open to the user namespaces of host gid {USERNS_ROOT}"):
        open_for_user_namespace(labkit_home, 200000, 200000)
    assert mode(labkit_home) == 0o710


@pytest.mark.root
def test_a_home_opened_to_the_former_default_map_is_opened_to_the_new_one(labkit_home):
    """Root's --userns map was 100000.. before (the first range useradd gives a user): a
    home opened to that group is opened to the new default's, not refused as another map's."""
    open_for_user_namespace(labkit_home, 100000, 100000)
    open_for_user_namespace(labkit_home, USERNS_ROOT, USERNS_ROOT)
    assert (mode(labkit_home), os.stat(labkit_home).st_gid) == (0o710, USERNS_ROOT)


@pytest.mark.root
def test_a_detached_containers_logs_and_state_are_not_world_readable(labkit_home, no_leftovers):
    container = Container(ContainerSpec(command="echo secret; sleep 30"))
    container.start(detach=True)
    try:
        for name in ("stdout.log", "stderr.log", "state.json"):
            assert mode(container.dir / name) & 0o077 == 0, name
    finally:
        container.remove()


# --- a home no other user owns or can replace (a real second host user) ------------------


@pytest.fixture
def second_user():
    """A real local account (as on a shared teaching host), removed with its home after the test."""
    import pwd

    name = f"lkhome{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)
        assert subprocess.run(["id", name], capture_output=True).returncode != 0, f"account {name} left behind"


@pytest.fixture
def their_tmp_dir(second_user):
    """A predictable path in /tmp that the second user made first, 0777 (as an attacker would)."""
    path = f"/tmp/labkit-shared-{os.getpid()}"
    made = as_user(second_user.pw_uid, second_user.pw_gid, "sh", "-c", f"umask 0; mkdir -m 0777 {path}")
    assert made.returncode == 0, made.stderr
    try:
        yield Path(path)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


SETUID_PYTHON = "cp /host-python /tmp/sush && chmod 4755 /tmp/sush"
WHO = "import os; print(os.getuid(), os.geteuid())"


def setuid_python_in(container_home) -> Container:
    """A container (kept, not removed) that made a setuid-root copy of the host's Python in
    its read-write layer: unlike busybox, Python keeps the euid a setuid bit gives it."""
    python = os.path.realpath(sys.executable)
    container = Container(ContainerSpec(command=SETUID_PYTHON, volumes=[f"{python}:/host-python:ro"]))
    container.run(remove=False).check()
    return container


@pytest.mark.root
def test_without_the_check_a_home_another_user_owns_gives_that_user_root(labkit_home, second_user, no_leftovers):
    # What labkit left before: a home the user made first, used as it was, and its
    # directories at the umask's 0755. The user runs the container's setuid copy: host root.
    container = setuid_python_in(labkit_home)
    try:
        os.chown(labkit_home, second_user.pw_uid, second_user.pw_gid)
        for directory in (labkit_home, labkit_home / "containers", container.dir, container.upper_dir,
                          container.upper_dir / "tmp"):
            os.chmod(directory, 0o755)
        for directory in labkit_home.parents:
            if directory == Path("/tmp"):
                break
            os.chmod(directory, os.stat(directory).st_mode | 0o001)
        ran = as_user(second_user.pw_uid, second_user.pw_gid, str(container.upper_dir / "tmp" / "sush"), "-c", WHO)
        assert ran.stdout.split() == [str(second_user.pw_uid), "0"], ran.stderr
    finally:
        os.chown(labkit_home, 0, 0)
        container.remove()


@pytest.mark.root
def test_a_home_another_user_made_first_is_refused_and_left_untouched(their_tmp_dir, second_user, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(their_tmp_dir))
    with pytest.raises(ConfigError) as refused:
        Container(ContainerSpec(command="true")).run()
    message = str(refused.value)
    assert f"belongs to {second_user.pw_name} (uid {second_user.pw_uid})" in message
    assert "unset LABKIT_HOME" in message
    assert os.listdir(their_tmp_dir) == [] and mode(their_tmp_dir) == 0o777


@pytest.mark.root
def test_a_home_below_a_directory_another_user_may_write_is_refused(their_tmp_dir, second_user, monkeypatch):
    # root's own home, but the user may rename it away and put theirs in its place
    home = their_tmp_dir / "root-home"
    monkeypatch.setenv("LABKIT_HOME", str(home))
    with pytest.raises(ConfigError, match=f"{their_tmp_dir}, above LABKIT_HOME {home}, belongs to {second_user.pw_name}"):
        labkit_home()
    os.chown(their_tmp_dir, 0, 0)  # root's now, but still 0777 and not sticky
    with pytest.raises(ConfigError, match=r"may be written by others \(mode 0o777, group root \(gid 0\), not sticky\)"):
        labkit_home()


@pytest.mark.root
def test_a_symlink_another_user_owns_is_refused(their_tmp_dir, second_user, tmp_path, monkeypatch):
    link = their_tmp_dir / "home"
    made = as_user(second_user.pw_uid, second_user.pw_gid, "ln", "-s", str(tmp_path), str(link))
    assert made.returncode == 0, made.stderr
    monkeypatch.setenv("LABKIT_HOME", str(link))
    with pytest.raises(ConfigError, match=f"belongs to {second_user.pw_name}"):
        labkit_home()


SYSTEM_PYTHON = "/usr/bin/python3"  # one any user may run (the test's own may sit in root's home)


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no /usr/bin/python3 for an ordinary user to run")
def test_running_as_an_ordinary_user_a_home_root_owns_is_refused(second_user, tmp_path):
    home = tmp_path / "roots"
    home.mkdir(mode=0o700)
    source = readable_copy_of_labkit(tmp_path)
    ran = as_user(second_user.pw_uid, second_user.pw_gid, "env", f"PYTHONPATH={source}", f"LABKIT_HOME={home}",
                  SYSTEM_PYTHON, "-c", "from labkit.home import labkit_home; labkit_home()")
    assert ran.returncode != 0
    assert f"LABKIT_HOME {home} belongs to root (uid 0), not to {second_user.pw_name}" in ran.stderr


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no /usr/bin/python3 for an ordinary user to run")
def test_a_home_below_a_directory_a_shared_primary_group_may_write_is_refused(second_user, tmp_path):
    # A host where users share one primary group (users, USERGROUPS_ENAB no): host nobody here,
    # with the second user's group as its own. A directory writable by that group counted as
    # "mine", and the second user may rename the home away from under it.
    source = readable_copy_of_labkit(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 0, second_user.pw_gid)
    os.chmod(shared, 0o775)
    home = shared / "home"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, second_user.pw_gid)
    ran = as_user(NOBODY, second_user.pw_gid, "env", f"PYTHONPATH={source}", f"LABKIT_HOME={home}",
                  SYSTEM_PYTHON, "-c", "from labkit.home import labkit_home; labkit_home()")
    assert ran.returncode != 0
    assert f"{shared}, above LABKIT_HOME {home}, may be written by others (mode 0o775, group " \
           f"{second_user.pw_name} (gid {second_user.pw_gid}), not sticky)" in ran.stderr, ran.stderr
    # why: the other member of the group may replace the home
    moved = as_user(second_user.pw_uid, second_user.pw_gid, "mv", str(home), str(shared / "gone"))
    assert moved.returncode == 0, moved.stderr


def readable_copy_of_labkit(directory: Path) -> Path:
    """labkit read from a copy in the test's own dir: the checkout may sit below a directory only
    root may enter (a fresh clone in a 0700 mktemp dir, as in CI)."""
    for above in (directory, *directory.parents):
        if above == Path("/tmp"):
            break
        os.chmod(above, os.stat(above).st_mode | 0o005)
    source = directory / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "labkit", source / "labkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return source


CHECK_IN_THE_NAMESPACE = """
import os, sys
from pathlib import Path
from labkit.errors import ConfigError
from labkit.home import check_trusted
sys.stdin.read(1)  # the maps are written
home = Path(sys.argv[1])
print(os.stat(home).st_uid in (0, os.geteuid()))  # what the rule compared before: 'root's or mine'
try:
    check_trusted(home)
    print("accepted")
except ConfigError as error:
    print(error)
"""


def check_in_a_user_namespace(home, source, uid_map, gid_map) -> list:
    """check_trusted(home) run as host nobody in a user namespace of its own with these maps
    (written by root from outside, as newuidmap would): the lines it printed."""
    checker = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "unshare", "--user", "--",
         "env", f"PYTHONPATH={source}", SYSTEM_PYTHON, "-c", CHECK_IN_THE_NAMESPACE, str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ours = os.readlink("/proc/self/ns/user")
        for _ in range(3000):
            if os.readlink(f"/proc/{checker.pid}/ns/user") != ours:
                break
            time.sleep(0.01)
        Path(f"/proc/{checker.pid}/uid_map").write_text(uid_map)
        Path(f"/proc/{checker.pid}/gid_map").write_text(gid_map)
        out, err = checker.communicate("go", timeout=60)
    finally:
        if checker.poll() is None:
            checker.kill()
            checker.wait()
    assert checker.returncode == 0, err
    return out.splitlines()


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no /usr/bin/python3 for an ordinary user to run")
@pytest.mark.parametrize("case", ["running as nobody", "root is the owner"])
def test_in_a_user_namespace_owners_are_compared_as_the_host_ids_they_stand_for(case, their_tmp_dir, second_user,
                                                                               tmp_path):
    # Inside a user namespace ids are the map's: every owner outside it (the second user
    # here) shows as 65534, the id a process running as nobody has too; and uid 0 is whoever
    # the map makes root. Compared as they show, the second user's 0777 home was 'mine' or
    # 'root's' (the first line); compared as the host ids they stand for, it is neither.
    source = readable_copy_of_labkit(tmp_path)
    them = second_user.pw_uid
    if case == "running as nobody":
        maps = f"{NOBODY} {NOBODY} 1\n", f"{NOBODY} {NOBODY} 1\n"
        owner = f"a user outside this user namespace's map (it shows as uid {NOBODY})"
        said = f"labkit runs as uid {NOBODY} of a user namespace, the id every file owner outside the namespace's " \
               f"map shows as: it cannot tell whether LABKIT_HOME {their_tmp_dir} is its own or another user's"
    else:
        maps = f"0 {them} 1\n1000 {NOBODY} 1\n", f"0 {second_user.pw_gid} 1\n1000 {NOBODY} 1\n"
        owner = f"host uid {them} (uid 0 in this user namespace)"
        said = f"LABKIT_HOME belongs to {owner}, not to host uid {NOBODY} (uid 1000 in this user namespace)"
    printed = check_in_a_user_namespace(their_tmp_dir, source, *maps)
    assert printed[0] == "True"  # without the host ids: accepted
    assert said in printed[1]
    assert os.listdir(their_tmp_dir) == [] and mode(their_tmp_dir) == 0o777


@pytest.mark.root
def test_containers_and_layers_are_private_whatever_the_umask(labkit_home, no_leftovers):
    old = os.umask(0)
    try:
        Container(ContainerSpec(command="true")).run().check()
    finally:
        os.umask(old)
    for name in ("containers", "layers"):
        assert mode(labkit_home / name) == 0o700, name
