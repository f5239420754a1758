"""`labkit kernel install`: the "Python 3 (labkit)" Jupyter kernel, which preloads the
labkit magics (`--ext labkit`), and its twin "Python 3 (labkit in a VM)" (`--vm`), the
same kernel started inside a labkit VM by labkit.vm.provisioner.

The spec ships inside the package (labkit/kernelspec/); installing copies it with the
kernel's argv pointing at the Python running the install, so the kernel finds the same
labkit (a venv's Python, not whatever `python3` is first on PATH).
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "labkit"
VM_KERNEL_NAME = "labkit-vm"
VM_DISPLAY_NAME = "Python 3 (labkit in a VM)"
# The entry point (pyproject.toml) under which jupyter_client finds labkit.vm.provisioner.
VM_PROVISIONER = "labkit-vm-provisioner"
SPEC_DIR = Path(__file__).resolve().parent / "kernelspec"


def spec_for(python: str = sys.executable, vm: bool = False) -> dict:
    spec = json.loads((SPEC_DIR / "kernel.json").read_text())
    # Through `labkit unshare`: rootless, the kernel runs as root of the user's labkit user
    # namespace, where builds and commits can give files the owners of the image's ids;
    # as the host's root it is the same kernel, exec'd at once.
    spec["argv"] = [python if word == "python3" else word for word in spec["argv"]]
    if vm:
        # In the guest the kernel is root of the guest's own kernel: nothing to unshare, and
        # the agent forks a warm kernel only for a bare `python -m ipykernel_launcher`.
        start = spec["argv"].index("--") + 1
        spec["argv"] = spec["argv"][start:]
        spec["display_name"] = VM_DISPLAY_NAME
        spec["metadata"]["kernel_provisioner"] = {
            "provisioner_name": VM_PROVISIONER,
            "config": {"memory": "1g", "cpus": 2},
        }
    return spec


def write_spec(directory: Path, python: str = sys.executable, vm: bool = False) -> Path:
    """A kernelspec directory (kernel.json and the logos) at `directory`."""
    shutil.copytree(SPEC_DIR, directory, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "kernel.json").write_text(json.dumps(spec_for(python, vm), indent=1) + "\n")
    return directory


def install(user: bool = False, prefix: str | None = None, python: str = sys.executable,
            vm: bool = False, name: str | None = None) -> str:
    """Install the kernelspec (the VM one with `vm`) under `name` (default "labkit" or
    "labkit-vm"); returns the directory it went to. Neither `user` nor `prefix`: the
    system-wide location, as `jupyter kernelspec install` does."""
    from jupyter_client.kernelspec import KernelSpecManager

    name = name or (VM_KERNEL_NAME if vm else KERNEL_NAME)
    with tempfile.TemporaryDirectory() as work:
        source = write_spec(Path(work) / name, python, vm)
        return KernelSpecManager().install_kernel_spec(str(source), name, user=user, prefix=prefix)


def uninstall() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    directory = manager.find_kernel_specs().get(KERNEL_NAME)
    if directory is None:
        raise LookupError(f"no {KERNEL_NAME!r} kernel is installed")
    manager.remove_kernel_spec(KERNEL_NAME)
    return directory


def cmd_install(options):
    prefix = sys.prefix if options.sys_prefix else options.prefix
    directory = install(user=options.user, prefix=prefix, vm=options.vm, name=options.name)
    name = options.name or (VM_KERNEL_NAME if options.vm else KERNEL_NAME)
    shown = VM_DISPLAY_NAME if options.vm else "Python 3 (labkit)"
    print(f"installed kernel {name!r} ({shown}, {sys.executable}) in {directory}")
    return 0


def cmd_uninstall(options):
    try:
        print(f"removed {uninstall()}")
    except LookupError as error:
        print(f"labkit: {error}", file=sys.stderr)
        return 1
    return 0


def add_subcommand(subparsers):
    from labkit.verbs import Verb, add_verbs, one_of, option

    add_verbs(subparsers, (
        Verb("kernel", "install the Jupyter kernel that preloads the labkit magics", metavar="ACTION", verbs=(
            Verb("install", "install the 'labkit' kernelspec for this Python", cmd_install, (one_of(
                option("--user", action="store_true", help="for this user only (~/.local/share/jupyter)"),
                option("--sys-prefix", action="store_true", help=f"into this environment ({sys.prefix})"),
                option("--prefix", help="into PREFIX/share/jupyter/kernels"),
            ), option("--vm", action="store_true", help=f"the kernel that runs in a VM ({VM_KERNEL_NAME!r})"),
               option("--name", help="install under this name (e.g. --vm --name labkit: the notebooks get the VM)"))),
            Verb("uninstall", "remove the installed 'labkit' kernelspec", cmd_uninstall),
        )),
    ))
