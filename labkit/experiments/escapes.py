"""What keeps a container in: the same attempts to reach past it, made as root inside a
container under five profiles (Docker's default, `--cap-add SYS_ADMIN`,
`--security-opt seccomp=unconfined`, `--privileged`, `--userns`), and then in a VM.

A container shares the host's kernel, so every wall around it is a check that kernel
makes: seccomp at system-call entry, then namespaces, capabilities, masked and
read-only mounts, the cgroup's device control and its limits. Each attempt below
names the walls in its way, in the order the kernel meets them, and when each one is
up (from labkit's own plan for that profile). An attempt refused under a profile was
stopped by the first wall up there, and that wall's answer (EPERM, EROFS, ESRCH, …)
must be what the probe saw; where no wall is up the attempt must get through. The
check fails on any cell where the kernel's answer disagrees.

Every attempt is harmless on a shared host: a key goes into a fresh session keyring,
a kernel setting is written back with the value already there, a mount or a user
namespace is the container's own, a device node is made in the container's /tmp and
only opened (a block major no driver has, or /dev/kmsg for writing, nothing written),
a host process gets signal 0, forks stop at the container's pids limit.

The VM column runs the same probe as root in a throwaway VM (`labkit.vm.run`): there
every attempt reaches a kernel, but the guest's own; the host's process is not even
there to signal.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from labkit.experiments.base import Check, finished, new_result, report, vm_unavailable

# The probe: stdlib Python run as root inside the container (or the VM), its own file
# (escapes_probe.py). It prints one line: PROBE_MARK {attempt: outcome}.
PROBE_FILE = Path(__file__).with_name("escapes_probe.py")
PROBE_MARK = "labkit-escapes:"


def probe_program() -> str:
    return PROBE_FILE.read_text()


PROFILES = {
    "default": {},
    "--cap-add SYS_ADMIN": {"cap_add": ["SYS_ADMIN"]},
    "seccomp=unconfined": {"security_opt": ["seccomp=unconfined"]},
    "--privileged": {"privileged": True},
    "--userns": {"userns": True},
}
VM = "VM"

# The walls, in the order the kernel meets them on a system call.
LAYERS = ("seccomp", "namespace", "capability", "masked path", "read-only path", "device control", "cgroup",
          "separate kernel")


@dataclass(frozen=True)
class Wall:
    layer: str        # one of LAYERS
    up: object        # defences (a dict, see defences()) -> bool: does it stand in this profile?
    answer: str       # what the attempt sees when this wall stops it


def _lacks_sys_admin(d):
    return not ({"sys_admin", "all"} & set(d["capabilities"]))


def _seccomp_without_sys_admin(d):
    return d["seccomp"] and _lacks_sys_admin(d)


@dataclass(frozen=True)
class Attempt:
    name: str         # the probe's function
    what: str         # in the user's words
    walls: tuple      # Wall, in the order the kernel meets them
    through: tuple = ("ok",)   # outcomes that mean "got past every wall"


ATTEMPTS = (
    Attempt("keyring", "add a key to a keyring (host root's, without a user namespace)",
            (Wall("seccomp", lambda d: d["seccomp"], "EPERM"),)),
    Attempt("user_namespace", "make a user namespace (unshare)",
            (Wall("seccomp", _seccomp_without_sys_admin, "EPERM"),)),
    Attempt("mount", "mount a tmpfs",
            (Wall("seccomp", _seccomp_without_sys_admin, "EPERM"),
             Wall("capability", _lacks_sys_admin, "EPERM"))),
    Attempt("kernel_setting", "write a host kernel setting in /proc/sys (its own value back)",
            (Wall("read-only path", lambda d: d["readonly_paths"], "EROFS"),)),
    Attempt("remount_kernel_settings", "remount /proc/sys read-write, then write the setting",
            (Wall("seccomp", lambda d: d["readonly_paths"] and _seccomp_without_sys_admin(d), "EPERM"),
             Wall("capability", lambda d: d["readonly_paths"] and _lacks_sys_admin(d), "EPERM"))),
    Attempt("masked_file", "read the host's timers in /proc/timer_list",
            (Wall("masked path", lambda d: d["masked_paths"], "masked"),)),
    Attempt("block_device", "mknod a block device and open it (a disk, on a real host)",
            (Wall("namespace", lambda d: d["user_namespace"], "mknod: EPERM"),
             Wall("device control", lambda d: d["device_control"], "EPERM")),
            through=("ok", "ENXIO")),   # ENXIO: the block layer looked for the disk
    Attempt("kmsg", "mknod /dev/kmsg and open it for writing (the host's kernel log)",
            (Wall("namespace", lambda d: d["user_namespace"], "mknod: EPERM"),
             Wall("device control", lambda d: d["device_control"], "EPERM"))),
    Attempt("host_process", "signal a host process (signal 0: only asks if it is there)",
            (Wall("separate kernel", lambda d: d["vm"], "ESRCH"),
             Wall("namespace", lambda d: d["pid_namespace"], "ESRCH"))),
    Attempt("fork_past_pids_limit", "fork past the pids limit",
            (Wall("cgroup", lambda d: d["pids_limit"], "EAGAIN"),)),
)
BY_NAME = {attempt.name: attempt for attempt in ATTEMPTS}


@dataclass
class Params:
    attempts: tuple = tuple(BY_NAME)
    profiles: tuple = tuple(PROFILES)
    pids: int = 32               # every profile's container gets this pids limit
    vm: bool = True              # False: leave the VM column out
    vm_memory: str = "256m"


def run(params: Params, progress=None):
    unknown = [name for name in params.attempts if name not in BY_NAME]
    unknown += [name for name in params.profiles if name not in PROFILES]
    if unknown:
        raise ValueError(f"escapes: unknown attempt or profile {', '.join(map(repr, unknown))}; "
                         f"attempts are {', '.join(BY_NAME)}; profiles are {', '.join(PROFILES)}")
    result = new_result("escapes", params)
    vm_reason = vm_unavailable(params)
    total, done = len(params.profiles) + (0 if vm_reason else 1), 0
    python = probe_python()
    outcomes, defended, skipped = {}, {}, {}
    for profile in params.profiles:
        options = PROFILES[profile]
        if options.get("userns") and python.unreachable:
            skipped[profile] = python.unreachable
        else:
            defended[profile] = defences(options, params.pids)
            outcomes[profile] = _in_a_container(params, options, python)
        done += 1
        report(progress, done, total, f"profile {profile}")
    if not vm_reason:
        defended[VM] = VM_DEFENCES
        outcomes[VM] = _in_a_vm(params, python)
        report(progress, total, total, "the VM")
    result.data = {"outcomes": outcomes, "defences": defended, "vm_skipped": vm_reason,
                   "skipped_profiles": skipped}
    return finished(result)


@dataclass(frozen=True)
class ProbePython:
    """The interpreter the probe runs on, and its files as read-only volumes."""
    path: str
    volumes: tuple
    unreachable: str | None = None   # why a user namespace's root could not run it


SYSTEM_PYTHON = "/usr/bin/python3"


def probe_python() -> ProbePython:
    """labkit's own interpreter when any user may reach it (a user namespace's root is
    an ordinary host uid), else the system's /usr/bin/python3: pyenv's, under a 0700
    /root, is out of a --userns container's reach."""
    own, volumes = mounted_python()
    if _reachable_by_anyone(own):
        return ProbePython(own, volumes)
    system = os.path.realpath(SYSTEM_PYTHON)
    if os.path.exists(system) and _reachable_by_anyone(system):
        import subprocess

        import labkit

        # That interpreter's own answer: its files are not this one's.
        ask = "import json; from labkit.experiments.escapes import mounted_python; print(json.dumps(mounted_python()))"
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(labkit.__file__)))
        answer = subprocess.run([system, "-s", "-c", ask], capture_output=True, text=True,
                                env={"PYTHONPATH": package_parent, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if answer.returncode == 0:
            path, volumes = json.loads(answer.stdout)
            return ProbePython(path, tuple(volumes))
    return ProbePython(own, volumes,
                       f"labkit's Python ({own}) sits where a user namespace's root cannot reach it, "
                       f"and there is no {SYSTEM_PYTHON} to run instead")


def mounted_python() -> tuple:
    """(interpreter, ("SRC:DST:ro", …)) of this Python as `--python` mounts it: the
    runtime's own answer, read from a spec that asks for it."""
    from labkit.runtime import ContainerSpec

    spec = ContainerSpec(command=["python3"], python=True).validated()
    return spec.command[0], tuple(f"{volume.source}:{volume.target}:ro" for volume in spec.volumes)


def _reachable_by_anyone(path) -> bool:
    """Every directory above `path` lets others through, and others may run it."""
    if not os.stat(path).st_mode & 0o001:
        return False
    directory = os.path.dirname(path)
    while directory != "/":
        if not os.stat(directory).st_mode & 0o001:
            return False
        directory = os.path.dirname(directory)
    return True


def defences(options: dict, pids: int) -> dict:
    """What stands around a container started with `options`, as labkit's own plan
    says (the same functions the runtime uses), in JSON-able form."""
    from labkit.runtime import ContainerSpec
    from labkit.runtime.plan import kernel_path_lists
    from labkit.security.options import device_rules, security_plan

    spec = ContainerSpec(pids=pids, **_spec_fields(options)).validated()
    security, lists = security_plan(spec), kernel_path_lists(spec)
    return {"seccomp": security.seccomp is not None, "capabilities": list(security.capabilities),
            "masked_paths": bool(lists["masked_paths"]), "readonly_paths": bool(lists["readonly_paths"]),
            "device_control": device_rules(spec) is not None, "user_namespace": "user" in spec.namespaces,
            "pid_namespace": "pid" in spec.namespaces, "pids_limit": spec.pids is not None, "vm": False}


# Root in a VM: none of a container's walls, every capability, a kernel of its own.
VM_DEFENCES = {"seccomp": False, "capabilities": ["all"], "masked_paths": False, "readonly_paths": False,
               "device_control": False, "user_namespace": False, "pid_namespace": False, "pids_limit": False,
               "vm": True}


def _spec_fields(options: dict) -> dict:
    from labkit.runtime import userns_fields

    fields = {key: value for key, value in options.items() if key != "userns"}
    return {**fields, **userns_fields(bool(options.get("userns")))}


def _probe_arguments(params) -> str:
    # The host process to signal is this one: present on the host, never in a container.
    return json.dumps({"attempts": list(params.attempts), "host_pid": os.getpid(), "forks": params.pids + 16,
                       "mark": PROBE_MARK})


def _in_a_container(params, options, python) -> dict:
    from labkit.runtime import run as run_container

    outcome = run_container([python.path, "-c", probe_program(), _probe_arguments(params)], image=probe_image(python),
                            volumes=list(python.volumes), pids=params.pids, **_spec_fields(options))
    return _parse(outcome.stdout, f"the probe's container ({outcome.cause}): "
                                  f"{(outcome.error or outcome.stderr).strip()[-400:]}")


def probe_image(python) -> str:
    """busybox plus empty mount points for the interpreter's volumes (and the mount
    attempt). A user namespace's root may not create them itself: busybox's directories
    belong to host root, which is not mapped inside (Docker's userns-remap chowns its
    layers instead). Kept in the store, named by what it holds, so it is built once."""
    import hashlib
    import tempfile

    from labkit.images import Store, build
    from labkit.runtime.client.build_step import run_build_step

    targets = sorted(volume.split(":")[1] for volume in python.volumes)
    tag = "labkit-escapes-probe-" + hashlib.sha256("\n".join(targets + [probe_program()]).encode()).hexdigest()[:12]
    store = Store()
    if tag not in store.names():
        directories = [t for t in targets if os.path.isdir(t)] + ["/mnt/labkit-escape"]
        files = [t for t in targets if not os.path.isdir(t)]
        script = " && ".join([f"mkdir -p {' '.join(directories + [os.path.dirname(f) for f in files])}"]
                             + ([f"touch {' '.join(files)}"] if files else []))
        with tempfile.TemporaryDirectory(prefix="labkit-escapes-") as context:
            build(f"FROM busybox\nRUN {script}\n", tag, context, store=store, run_step=run_build_step)
    return tag


def _in_a_vm(params, python) -> dict:
    from labkit.vm import run as run_vm

    outcome = run_vm([python.path, "-c", probe_program(), _probe_arguments(params)], memory=params.vm_memory, cpus=1)
    return _parse(outcome.output, f"the probe in the VM (exit {outcome.exit_code}): {outcome.output.strip()[-400:]}")


def _parse(output: str, what: str) -> dict:
    for line in output.splitlines():
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    raise RuntimeError(f"no answer from {what}")


# --- classification: pure, from the recorded data alone ----------------------------------

@dataclass(frozen=True)
class Verdict:
    attempt: str
    profile: str
    outcome: str      # what the probe saw: "ok", "EPERM", "masked", "mknod: EPERM", …
    stopped_by: str | None    # the layer, None when it got through
    expected: bool    # the outcome is what the walls standing there predict

    @property
    def label(self) -> str:
        if not self.expected:
            return f"UNEXPECTED {self.outcome}"
        return self.stopped_by or "through"


def classify(attempt: Attempt, profile: str, outcome: str, defended: dict) -> Verdict:
    """Which layer stopped `attempt` under a profile with these defences, given what the
    probe saw; `expected` is False when the kernel's answer contradicts the walls."""
    standing = next((wall for wall in attempt.walls if wall.up(defended)), None)
    if standing is None:
        return Verdict(attempt.name, profile, outcome, None, outcome in attempt.through)
    return Verdict(attempt.name, profile, outcome, standing.layer, outcome == standing.answer)


def verdicts(result) -> list:
    """Every (attempt, profile) cell of the result, the VM's last."""
    cells = []
    for profile, outcomes in result.data["outcomes"].items():
        for name in result.params["attempts"]:
            cells.append(classify(BY_NAME[name], profile, outcomes[name], result.data["defences"][profile]))
    return cells


def table(result, profiles=None) -> str:
    """The attempts x profiles table as text: which layer stopped each, or `through`
    (`profiles`: the columns, by default every one the result has, the VM's included)."""
    cells = {(v.attempt, v.profile): v.label for v in verdicts(result)}
    profiles = [p for p in (profiles or result.data["outcomes"]) if p in result.data["outcomes"]]
    width = max(len(label) for label in [*cells.values(), *profiles]) + 2
    lines = ["attempt".ljust(26) + "".join(p.ljust(width) for p in profiles).rstrip()]
    for name in result.params["attempts"]:
        lines.append(name.ljust(26) + "".join(cells[name, p].ljust(width) for p in profiles).rstrip())
    lines += [f"{profile} skipped: {why}" for profile, why in result.data.get("skipped_profiles", {}).items()]
    lines.append(pids_note(result))
    return "\n".join(lines)


def pids_note(result) -> str:
    """Docker sets no pids limit by default; this experiment gives every profile one."""
    return (f"every container profile above also has --pids-limit {result.params.get('pids', Params.pids)} "
            "(Docker's default has no pids limit: without it, fork_past_pids_limit gets through)")


def check(result) -> Check:
    claim = ("the default profile (with a pids limit added) stops every attempt, each cell is stopped by the first defence standing "
             "there, and an attempt gets through wherever none stands")
    if result.skipped:
        return Check.skip(claim, result.skipped)
    cells = verdicts(result)
    problems = [f"{v.attempt} under {v.profile}: saw {v.outcome!r}, "
                + (f"expected {v.stopped_by}'s answer" if v.stopped_by else "expected it to get through")
                for v in cells if not v.expected]
    # Judged on what the kernel answered, not on the walls: a plan that lost one would
    # predict, and so excuse, the attempt getting through.
    problems += [f"{v.attempt} got through the default profile" for v in cells
                 if v.profile == "default" and v.outcome in BY_NAME[v.attempt].through]
    through = sorted({f"{v.attempt} ({v.profile})" for v in cells if v.stopped_by is None and v.expected})
    detail = "; ".join(problems) or f"{len(cells)} cells as predicted; through: {', '.join(through) or 'none'}"
    return Check(claim, not problems, detail)


# --- figure ------------------------------------------------------------------------------

COLOURS = {"seccomp": "#4575b4", "namespace": "#91bfdb", "capability": "#abd9e9", "masked path": "#fee090",
           "read-only path": "#fdae61", "device control": "#a6d96a", "cgroup": "#66bd63",
           "separate kernel": "#bbbbbb", "through": "#d73027", "unexpected": "#000000"}


def plot(result):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names, profiles = list(result.params["attempts"]), list(result.data["outcomes"])
    cells = {(v.attempt, v.profile): v for v in verdicts(result)}
    # The size does not depend on whether the VM ran: a notebook prints the figure's repr.
    figure, axes = plt.subplots(figsize=(11, 1.5 + 0.45 * len(names)))
    for row, name in enumerate(names):
        for column, profile in enumerate(profiles):
            verdict = cells[name, profile]
            key = "unexpected" if not verdict.expected else (verdict.stopped_by or "through")
            axes.add_patch(plt.Rectangle((column, row), 1, 1, facecolor=COLOURS[key], edgecolor="white"))
            text = "through" if key == "through" else ("?" + verdict.outcome if key == "unexpected" else key)
            axes.text(column + 0.5, row + 0.5, text, ha="center", va="center", fontsize=7,
                      color="white" if key in ("seccomp", "through", "unexpected") else "black")
    axes.set_xlim(0, len(profiles))
    axes.set_ylim(len(names), 0)
    axes.set_xticks([c + 0.5 for c in range(len(profiles))], profiles, fontsize=8)
    axes.set_yticks([r + 0.5 for r in range(len(names))], names, fontsize=8)
    axes.xaxis.tick_top()
    axes.tick_params(length=0)
    for side in axes.spines.values():
        side.set_visible(False)
    used = sorted({("through" if v.stopped_by is None else v.stopped_by) for v in cells.values() if v.expected},
                  key=list(COLOURS).index)
    axes.legend(handles=[Patch(color=COLOURS[k], label=k) for k in used], loc="upper left",
                bbox_to_anchor=(1.01, 1), fontsize=8, title="stopped by", title_fontsize=8)
    title = ("as root inside a container (and in a VM): what stopped each attempt\n"
             f"(every container profile with --pids-limit {result.params.get('pids', Params.pids)}: Docker sets none by default)")
    if result.data.get("vm_skipped"):
        title += f"\nVM column skipped: {result.data['vm_skipped'][:80]}"
    axes.set_title(title, fontsize=9, pad=28)
    figure.tight_layout()
    return figure
