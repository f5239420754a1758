"""The lab as mybinder.org runs it, built and run here: a Debian image with `binder/apt.txt`
installed, run by podman the way Binder runs a notebook container (uid 1000, Docker's
default seccomp profile in Docker's JSON format written out from labkit's own equal
profile, no capability added to the default ones, no /dev/kvm), in which
`binder/postBuild` installs labkit as repo2docker would, and nbclient then runs notebooks
with the kernel postBuild made the default: the VM kernel.

    with binder_like_image(work) as image:
        executed = run_notebooks_in(image, work, ["00-start-here.ipynb"])

Also the same notebooks as a throw-away ordinary user on the host (no root, no kvm group),
and the comparison of executed outputs with the stored (root, host) ones under
notebooks/sanitize.cfg. Used by tests/test_binder_like.py."""

import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
BINDER_UID = 1000   # repo2docker's NB_UID: Binder's notebook user
HOME = "/home/jovyan"
VENV = "/srv/venv"   # repo2docker's environment is its user's own, as this one is
# The Debian release of the image: the one this host runs; Debian's mirror, reached by mmdebstrap,
# is where its packages come from (there is no container registry here).
SUITE = "bookworm"
# What repo2docker's base image brings before binder/apt.txt: a Python (runtime.txt asks
# for 3.11: bookworm's), certificates for pip, and ps, which the notebooks run.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "procps")
# The host's pip configuration (a package mirror, local wheels) and its CA bundle (which may
# hold a proxy's CA), so that pip and the kernel's fetch inside reach what they reach on the
# host. Mounted read-only where present.
HOST_PATHS = ("/etc/pip.conf", "/etc/xdg/pip", "/opt/wheels", "/opt/pypi", "/opt/pypi-more",
              "/etc/ssl/certs/ca-certificates.crt")
CELL_TIMEOUT = 1800     # a cell under emulation on a loaded 2-core host
STARTUP_TIMEOUT = 1800  # a guest's boot plus the kernel's first imports, emulated

EXECUTE = r"""
import os, sys, nbformat
from nbclient import NotebookClient
for path in sys.argv[2:]:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="labkit", timeout=int(sys.argv[1]), startup_timeout=int(sys.argv[1]),
                   allow_errors=True, resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    nbformat.write(nb, path + ".executed")
"""

# What runs in the container, as uid 1000: first the premise (no user namespace here, no
# KVM, a seccomp filter, no effective capability), then repo2docker's steps for a
# repository with binder/ (the repository in $HOME, postBuild from there), then the notebooks.
IN_CONTAINER = r"""
set -euo pipefail
grep -E '^(Seccomp|CapEff|CapBnd):' /proc/self/status
if unshare -U true 2>/dev/null; then echo "binder-like: this container let a user namespace be made" >&2; exit 90; fi
if [ -e /dev/kvm ]; then echo "binder-like: /dev/kvm is there" >&2; exit 91; fi
python3 -m venv "$VENV"
export PATH="$VENV/bin:$PATH"
cd "$HOME"
bash binder/postBuild
python -c "$EXECUTE" "$TIMEOUT" "$@"
"""


def apt_packages() -> list:
    """binder/apt.txt's packages (repo2docker's format: one a line, # comments)."""
    lines = (REPO / "binder" / "apt.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def why_not() -> str | None:
    """Why the Binder-like container cannot be built here, or None."""
    if os.geteuid() != 0:
        return "builds an image with mmdebstrap and runs rootful podman: needs root"
    for command, package in (("podman", "podman"), ("runc", "runc"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(command) is None:
            return f"{command} is not installed (Debian package {package}; `make setup` installs it)"
    return None


def docker_seccomp_json(path: Path) -> Path:
    """labkit's default profile (equal to Docker's), in Docker's JSON format, as `--security-opt seccomp=` reads it."""
    from labkit.security.default_seccomp import default_profile

    path.write_text(json.dumps(default_profile(), indent=1))
    return path


def rlimit_options() -> list:
    """--ulimit for what rootful podman would otherwise raise. Podman asks for nofile 1048576
    and nproc above this process's hard limits; raising a hard limit needs CAP_SYS_RESOURCE,
    and a caller without it in its bounding set (a sandboxed root shell) gets runc's "error
    setting rlimit type 7" (RLIMIT_NOFILE; type 6, RLIMIT_NPROC, once nofile is given) on
    every run. The caller's own hard limits can always be kept; podman's conmon runs with nproc
    no higher than pid_max."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def bounding_set_allowed() -> frozenset:
    """The capabilities a Binder container's bounding set may hold: Docker's defaults
    (labkit's CONTAINER_DEFAULT). Podman's own default set is a subset of them; none is
    added: podman makes an added capability an ambient, hence effective, one of a non-root
    user, which Docker does not, and Binder's user has none in effect."""
    from labkit.linux.capabilities import CONTAINER_DEFAULT

    return CONTAINER_DEFAULT


def _checked(command, what, timeout):
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{what} failed ({done.returncode}): {done.stderr[-4000:]}\n{done.stdout[-4000:]}")
    return done


@contextlib.contextmanager
def binder_like_image(work: Path):
    """A podman image of Debian with binder/apt.txt installed and Binder's user; removed afterwards."""
    tag = f"localhost/labkit-binder-like:{os.getpid()}-{secrets.token_hex(3)}"
    rootfs = work / "rootfs.tar"
    packages = ",".join((*BASE_PACKAGES, *apt_packages()))
    hooks = [f'chroot "$1" useradd --create-home --uid {BINDER_UID} --user-group jovyan',
             f'mkdir -p "$1{VENV}" && chown {BINDER_UID}:{BINDER_UID} "$1{VENV}"']
    _checked(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={packages}",
              *(f"--customize-hook={hook}" for hook in hooks), SUITE, str(rootfs)], "mmdebstrap", 1800)
    try:
        _checked(["podman", "import", "--quiet", str(rootfs), tag], "podman import", 600)
    finally:
        rootfs.unlink(missing_ok=True)
    try:
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)


def repository_copy(home: Path) -> None:
    """The repository as Binder checks it out, into `home`: its tracked files (as they are in
    the work tree), not a .venv, a LABKIT_HOME or anything else left untracked in it."""
    listed = _checked(["git", "-C", str(REPO), "ls-files", "-z", "--cached"], "git ls-files", 60).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = home / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_notebooks_in(image: str, work: Path, notebooks: list, timeout=4 * 3600):
    """`notebooks` (paths below notebooks/; a lab's source ../instructor/labs/NAME) run with
    nbclient in a container of `image` run as Binder runs one; returns (the podman run, {notebook: executed copy})."""
    home = work / "home"
    home.mkdir()
    repository_copy(home)
    subprocess.run(["chown", "-R", f"{BINDER_UID}:{BINDER_UID}", str(home)], check=True)
    profile = docker_seccomp_json(work / "docker-default-seccomp.json")
    name = f"labkit-binder-like-{os.getpid()}-{secrets.token_hex(3)}"
    host_mounts = [f"--volume={path}:{path}:ro" for path in HOST_PATHS if os.path.exists(path)]
    pip_env = [f"--env={key}={value}" for key, value in os.environ.items() if key.startswith("PIP_")]
    # slirp4netns: the container's pip and kernel fetches leave as the host's own sockets do.
    # podman's default bridge would turn on the host's ip_forward and NAT the container's
    # traffic off the host (netavark does both), which this project's tests never do.
    command = ["podman", "run", "--rm", "--name", name, "--runtime", "runc", "--network", "slirp4netns",
               "--user", f"{BINDER_UID}:{BINDER_UID}",
               "--security-opt", f"seccomp={profile}", *rlimit_options(),
               f"--volume={home}:{HOME}", *host_mounts, *pip_env,
               f"--env=HOME={HOME}", f"--env=VENV={VENV}", f"--env=TIMEOUT={CELL_TIMEOUT}", f"--env=EXECUTE={EXECUTE}",
               "--workdir", HOME, image, "bash", "-c", IN_CONTAINER, "binder-like",
               *(f"{HOME}/notebooks/{notebook}" for notebook in notebooks)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "0", name], capture_output=True)
    executed = {notebook: home / "notebooks" / (notebook + ".executed") for notebook in notebooks}
    return done, {notebook: nbformat.read(str(path), as_version=4)
                  for notebook, path in executed.items() if path.exists()}


def sanitize_patterns() -> list:
    from nbval.plugin import get_sanitize_patterns

    return list(get_sanitize_patterns((NOTEBOOKS / "sanitize.cfg").read_text()))


def _kept(outputs, patterns) -> list:
    """`outputs` less the streams that sanitize.cfg empties (the VM kernel's notice)."""
    from rootless_notebooks import _apply

    return [output for output in outputs
            if output.get("output_type") != "stream" or _apply("".join(output.get("text", "")), patterns)]


def differing_cells(notebook: str, executed) -> list:
    """The code cells nbval would check whose outputs in `executed` differ from the stored
    ones after notebooks/sanitize.cfg: [(cell index, stored, executed)], sanitised."""
    from rootless_notebooks import _checked as checked_by_nbval
    from rootless_notebooks import _compared, _patterns_for, _skip_for

    stored = nbformat.read(str(NOTEBOOKS / notebook), as_version=4)
    patterns, skip = sanitize_patterns() + _patterns_for(notebook), _skip_for(notebook)
    differ = []
    for index, (cell, ran) in enumerate(zip(stored.cells, executed.cells)):
        if cell.cell_type != "code" or not checked_by_nbval(cell):
            continue
        want = _compared(_kept(cell.outputs, patterns), patterns, skip)
        got = _compared(_kept(ran.outputs, patterns), patterns, skip)
        if want != got:
            differ.append((index, want, got))
    return differ


def errors_in(executed) -> list:
    """(cell index, error name, value) of each cell that raised and is not tagged raises-exception."""
    return [(index, output.get("ename"), output.get("evalue"))
            for index, cell in enumerate(executed.cells)
            if cell.cell_type == "code" and "raises-exception" not in cell.metadata.get("tags", [])
            for output in cell.get("outputs", []) if output.get("output_type") == "error"]


def lab_checks(executed) -> list:
    """Every check the lab's cells reported (labkit.grading's JSON output): dicts with passed, observed."""
    from labkit.grading.checks import MIME

    return [check for cell in executed.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if MIME in output.get("data", {})
            for check in output["data"][MIME]["checks"]]


def described(differ) -> str:
    return "\n".join(f"cell {index}:\n  stored:   {want!r}\n  executed: {got!r}" for index, want, got in differ)
