"""`--sandbox vm`, the guest's side: run as `python -m labkit.grading.vm_judge EXCHANGE_DIR`
by the guest's stage 2, as the guest's root. It grades the one submission in the exchange
directory as `labkit grade run` does on a host (a namespaces sandbox for the student's
kernel, the judge here, outside it) and leaves the verdict there for the host
(labkit/grading/vm.py, which reads it as data)."""

import json
import os
import sys
import tempfile
from pathlib import Path

from labkit.errors import ConfigError
from labkit.grading.vm import EXECUTED, REQUEST, SOURCE, SUBMISSION, VERDICT


def judge_in_guest(exchange: Path) -> int:
    """The guest's side: grade the submission with the namespaces sandbox, the judge here
    (guest root, outside the sandbox), and leave the verdict in the exchange directory."""
    import nbformat

    from labkit.grading.grader import grade, read_notebook
    from labkit.grading.sandbox import SandboxLimits

    request = json.loads((exchange / REQUEST).read_text())
    source = read_notebook(exchange / SOURCE)
    # The sandbox's directories live in the guest's own /tmp, never below the exchange.
    workdir = tempfile.mkdtemp(prefix="labkit-guest-")
    os.chmod(workdir, 0o711)
    submission = grade(source, str(exchange / SOURCE), exchange / SUBMISSION,
                       cell_timeout=request["cell_timeout"], kernel_name=request["kernel_name"],
                       sandbox="namespaces", limits=SandboxLimits(**request["limits"]), workdir=workdir)
    if submission.executed is not None:
        (exchange / EXECUTED).write_text(nbformat.writes(submission.executed))
    (exchange / VERDICT).write_text(json.dumps(submission.to_dict()))
    return 0


def main(argv) -> int:
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        raise ConfigError("usage: python -m labkit.grading.vm_judge EXCHANGE_DIR (run by labkit grade run --sandbox vm)")
    return judge_in_guest(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
