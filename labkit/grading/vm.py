"""`--sandbox vm`: each submission graded in a throw-away `labkit vm` guest.

For a grader that distrusts the kernel as well as the student. Everything of one
submission happens in a VM of its own, booted for it and powered off after it:

    host grader ── labkit.vm.run ──> guest (its own kernel, root is the guest's)
      │                               └─ the judge: `python -m labkit.grading.vm_judge`, guest root,
      │                                  outside any sandbox; grades exactly as the namespaces
      │                                  kind does on a host:
      │                                    └─ namespaces sandbox (user, mount, PID, net... ns)
      │                                         └─ the student's kernel
      └── reads the judge's verdict from the exchange directory, as untrusted data

The score is never computed by code of the student's: the judge runs in the guest outside
the nested sandbox and reads the sandbox's real state there, as it does on a host. The
channel back is a host directory shared with the guest (9p) and mounted only in the
guest's own mount namespace, at a path the sandbox does not bind: the student's kernel,
root only of its user namespace in a root of read-only binds, never sees it.

What the host takes back is data, read with a size cap and checked against the source:
one score per grade cell of the source, each within its points, and the executed
notebook. A student who broke the guest kernel could write that verdict; they would
still reach nothing of the host, the gradebook or another submission (docs/labs.md).
"""

import json
import shutil
import sys
from pathlib import Path

REQUEST = "request.json"
VERDICT = "verdict.json"
EXECUTED = "executed.ipynb"
SUBMISSION = "submission.ipynb"
SOURCE = "source.ipynb"
VERDICT_CAP = 1 << 20                # bytes of verdict.json the host reads
EXECUTED_CAP = 64 << 20              # bytes of the executed notebook the host reads
BOOT_ALLOWANCE = 900.0               # seconds for booting and starting Python (emulation is slow)
GUEST_SPARE_MEMORY = 768 << 20       # the guest's kernel, the judge and Jupyter, above the sandbox's limit


def grade_in_vm(source_path, path, cell_timeout, kernel_name, limits, submission):
    """Grade `path` in a fresh VM; fill `submission` (a grader.Submission) from the judge's
    verdict. Raises HostError when no VM can run here."""
    from labkit.grading.sandbox import SandboxLimits
    from labkit.vm import VMTimeout, run
    from labkit.vm.leftovers import new_run_dir

    limits = (limits or SandboxLimits()).validated()
    # Named as a VM run's files are: a later run removes it if this process dies uncleanly.
    exchange = new_run_dir()
    try:
        shutil.copyfile(source_path, exchange / SOURCE)
        shutil.copyfile(path, exchange / SUBMISSION)
        request = {"cell_timeout": cell_timeout, "kernel_name": kernel_name,
                   "limits": {"memory": limits.memory_bytes, "pids": int(limits.pids),
                              "cpus": float(limits.cpus), "wall_seconds": float(limits.wall_seconds)}}
        (exchange / REQUEST).write_text(json.dumps(request))
        memory = max(1 << 30, limits.memory_bytes + GUEST_SPARE_MEMORY)
        try:
            result = run([sys.executable, "-m", "labkit.grading.vm_judge", str(exchange)], memory=f"{memory >> 20}m",
                         cpus=max(1, round(float(limits.cpus))), rw_dir=exchange, cwd="/",
                         timeout=limits.wall_seconds + BOOT_ALLOWANCE, env={"PYTHONDONTWRITEBYTECODE": "1"},
                         root_cache="loose")   # the judge and the kernel import much of the same Python
        except VMTimeout:
            submission.error = f"its VM did not finish within {limits.wall_seconds + BOOT_ALLOWANCE:g} s"
            return submission
        try:
            verdict = _read_capped(exchange / VERDICT, VERDICT_CAP)
            if verdict is None:
                tail = "\n".join(result.output.strip().splitlines()[-5:])
                submission.error = f"the VM's judge gave no verdict (exit status {result.exit_code}): {tail[-600:]}"
                return submission
            take_verdict(submission, json.loads(verdict))
        except ValueError as error:   # not JSON, too big, not an object: no grade from it
            submission.error = f"the VM's verdict could not be used: {str(error)[:300]}"
            return submission
        try:
            executed = _read_capped(exchange / EXECUTED, EXECUTED_CAP)
        except ValueError as error:   # the grade stands; the instructor's view of the run is lost
            submission.notes.append(f"the executed notebook from the VM could not be read: {str(error)[:300]}")
            executed = None
        if executed is not None:
            import nbformat

            try:
                submission.executed = nbformat.reads(executed.decode(), as_version=4)
            except Exception:  # noqa: BLE001 — a broken copy costs the instructor's view, not the grade
                submission.notes.append("the executed notebook from the VM could not be read")
        return submission
    finally:
        shutil.rmtree(exchange, ignore_errors=True)


def take_verdict(submission, verdict) -> None:
    """Fill `submission` from the guest's verdict, taken as data: only the source's grade
    cells, each score a number within its points (the rest of the verdict is ignored)."""
    from labkit.grading.scoring import CellScore

    if not isinstance(verdict, dict):
        raise ValueError("the VM's verdict is not an object")
    cells = {cell.get("grade_id"): cell for cell in verdict.get("cells", []) if isinstance(cell, dict)}
    scored = []
    for expected in submission.cells:
        cell = cells.get(expected.grade_id, {})
        score = cell.get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool) and score == score:
            expected.score = max(0.0, min(float(score), expected.max_score))
            expected.status = str(cell.get("status", "scored"))[:40]
            expected.checks = cell.get("checks") if isinstance(cell.get("checks"), list) else []
        scored.append(expected)
    submission.cells = scored
    submission.error = _text(verdict.get("error"))
    submission.cut = [_text(item) for item in verdict.get("cut", []) if isinstance(item, (str, int))][:1000]
    submission.notes = [_text(item) for item in verdict.get("notes", []) if isinstance(item, str)][:1000]


def _text(value, most=2000):
    return None if value is None else str(value)[:most]


def _read_capped(path, cap):
    """The guest's file, as data: a regular file of at most `cap` bytes, never through a
    symlink (to a host file) nor a FIFO (its open would wait for ever) the guest put there."""
    from labkit.files import read_regular

    try:
        data = read_regular(path, cap + 1, follow=False)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ValueError(f"{path.name} from the VM is not a regular file ({error.strerror})") from None
    if len(data) > cap:
        raise ValueError(f"{path.name} from the VM is over {cap} bytes")
    return data
