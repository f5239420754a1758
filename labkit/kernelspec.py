"""`labkit kernel install`: the "Python 3 (labkit)" Jupyter kernel, which preloads the
labkit magics (`--ext labkit`).

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
SPEC_DIR = Path(__file__).resolve().parent / "kernelspec"


def spec_for(python: str = sys.executable) -> dict:
    spec = json.loads((SPEC_DIR / "kernel.json").read_text())
    spec["argv"][0] = python
    return spec


def install(user: bool = False, prefix: str | None = None, python: str = sys.executable) -> str:
    """Install the kernelspec; returns the directory it went to. Neither `user` nor
    `prefix`: the system-wide location, as `jupyter kernelspec install` does."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / KERNEL_NAME
        shutil.copytree(SPEC_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
        (source / "kernel.json").write_text(json.dumps(spec_for(python), indent=1) + "\n")
        return KernelSpecManager().install_kernel_spec(str(source), KERNEL_NAME, user=user, prefix=prefix)


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
    directory = install(user=options.user, prefix=prefix)
    print(f"installed kernel {KERNEL_NAME!r} (Python 3 (labkit), {sys.executable}) in {directory}")
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
            ),)),
            Verb("uninstall", "remove the installed 'labkit' kernelspec", cmd_uninstall),
        )),
    ))
