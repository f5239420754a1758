"""`labkit doctor`: what this host offers, and what to do about what it lacks."""

import os
from dataclasses import dataclass


@dataclass
class Check:
    what: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def diagnose() -> list:
    rows = [check_root()]
    rows += check_namespaces()
    rows += check_cgroups()
    rows.append(check_seccomp())
    rows.append(check_device_control())
    rows.append(check_overlay())
    rows.append(check_busybox())
    rows.append(check_vm())
    rows.append(check_vm_kernel())
    return rows


def check_root() -> Check:
    from labkit.linux import capabilities

    if os.geteuid() != 0:
        return Check("root", False, f"running as uid {os.geteuid()}", "run labkit as root (sudo), or in a VM or Binder image")
    missing = {"sys_admin", "net_admin", "sys_chroot", "mknod"} - capabilities.of_process()["CapEff"]
    if missing:
        return Check("capabilities", False, "missing " + ", ".join(sorted(missing)),
                     "run with full capabilities (e.g. docker run --privileged)")
    return Check("root", True, "uid 0 with CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_MKNOD")


def check_namespaces() -> list:
    from labkit.linux.namespaces import NAMESPACES, available_namespaces

    found = available_namespaces()
    status = _own_status()
    rows = []
    for ns in NAMESPACES:
        reason = found.get(ns.name)
        optional = ns.name in ("user", "time")
        detail, fix = f"{ns.flag_name}: {ns.isolates}", ""
        if reason is not None:
            detail, fix = refusal_cause(ns.name, reason, status)
        rows.append(Check(f"namespace {ns.name}", reason is None, detail, fix, required=not optional))
    return rows


def _own_status() -> str:
    with open("/proc/self/status") as handle:
        return handle.read()


def _status_field(status: str, name: str) -> str:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return ""


def refusal_cause(kind: str, reason: str, status: str, sysctl=None) -> tuple:
    """(what refused namespace `kind`, what to do), from /proc/self/status's Seccomp
    and CapEff fields and the user-namespace sysctls. `reason` is the probe's
    strerror; `sysctl(name)` reads /proc/sys/<name> (None when absent)."""
    from labkit.linux import capabilities

    sysctl = sysctl or _read_sysctl
    vm_kernel = "use the VM kernel: `labkit lab --vm`, or pick \"Python 3 (labkit in a VM)\" in Jupyter"
    if kind == "time" and "not supported" in reason.lower():
        return reason, "needs Linux 5.6 or newer"
    if "kernel has no" in reason:
        return reason, "needs a kernel built with this namespace"
    if _status_field(status, "Seccomp") == "2":
        return (f"{reason}: a seccomp filter confines this process (Seccomp: 2 in /proc/self/status), as a "
                "container's default profile does; it refuses new namespaces and nothing inside can lift it",
                vm_kernel)
    if kind == "user":
        if sysctl("user/max_user_namespaces") == "0":
            return f"{reason}: user.max_user_namespaces is 0", "sysctl user.max_user_namespaces=15000 (as root)"
        if sysctl("kernel/unprivileged_userns_clone") == "0":
            return (f"{reason}: kernel.unprivileged_userns_clone is 0",
                    "sysctl kernel.unprivileged_userns_clone=1 (as root)")
        if sysctl("kernel/apparmor_restrict_unprivileged_userns") == "1":
            return (f"{reason}: AppArmor restricts unprivileged user namespaces",
                    "sysctl kernel.apparmor_restrict_unprivileged_userns=0 (as root), or " + vm_kernel)
        return reason, vm_kernel
    effective = capabilities.decode(int(_status_field(status, "CapEff") or "0", 16))
    if "sys_admin" not in effective:
        return (f"{reason}: this process lacks CAP_SYS_ADMIN (CapEff in /proc/self/status); labkit makes it "
                "inside a user namespace when that is allowed", "run as root, or rootless where user namespaces work")
    return reason, "needs a kernel built with this namespace"


def _read_sysctl(name: str):
    try:
        with open(f"/proc/sys/{name}") as handle:
            return handle.read().strip()
    except OSError:
        return None


def namespaces_usable() -> tuple:
    """(True, "") when labkit can make containers here (root with CAP_SYS_ADMIN, and
    every namespace but the optional user and time ones), else (False, why), for
    `labkit lab` to choose the VM kernel. labkit has no rootless mode yet."""
    from labkit.linux import capabilities
    from labkit.linux.namespaces import available_namespaces

    found = available_namespaces()
    refused = {kind: reason for kind, reason in found.items() if reason is not None}
    required = {kind: reason for kind, reason in refused.items() if kind not in ("user", "time")}
    privileged = os.geteuid() == 0 and "sys_admin" in capabilities.of_process()["CapEff"]
    if privileged and not required:
        return True, ""
    if refused.keys() - {"time"}:
        kind = "user" if "user" in refused else sorted(required)[0]
        detail, _ = refusal_cause(kind, refused[kind], _own_status())
        return False, f"namespace {kind}: {detail}"
    return False, f"labkit makes containers as root with CAP_SYS_ADMIN, and this process (uid {os.geteuid()}) is not"


def check_vm_kernel() -> Check:
    usable, why = namespaces_usable()
    if usable:
        return Check("VM kernel", True, "not needed: containers can be made on this host", required=False)
    return Check("VM kernel", False, f"containers cannot be made here ({why})",
                 "labkit lab --vm (after labkit vm setup): the kernel runs in a VM with cgroup v2, root inside",
                 required=False)


def check_cgroups() -> list:
    from labkit.cgroups import detect_mode, host_hierarchy
    from labkit.errors import HostError

    try:
        mode = detect_mode()
        hierarchy = host_hierarchy()
    except HostError as error:
        return [Check("cgroups", False, str(error), "mount cgroup2 on /sys/fs/cgroup")]
    rows = [Check("cgroup mode", True, f"{mode}" + (" (legacy/hybrid: one hierarchy per controller)" if mode == "v1" else " (unified)"))]
    for kind in ("memory", "cpu", "pids", "io"):
        have = kind in hierarchy.controllers
        rows.append(Check(f"cgroup {kind}", have, "controller available" if have else "controller missing",
                          "" if have else f"enable the {kind} controller (cgroup_enable=, or subtree_control)",
                          required=kind != "io"))
    return rows


def check_seccomp() -> Check:
    """Docker's default profile needs libseccomp (to compile it) and a kernel with filters."""
    from labkit.errors import HostError
    from labkit.linux import seccomp

    try:
        version = seccomp.libseccomp_version()
    except HostError as error:
        return Check("seccomp", False, str(error), "apt-get install libseccomp2")
    why_not = seccomp.kernel_support()
    if why_not:
        return Check("seccomp", False, f"libseccomp {version}, but {why_not}",
                     "a kernel built with CONFIG_SECCOMP_FILTER, or run with --security-opt seccomp=unconfined")
    return Check("seccomp", True, f"libseccomp {version}; kernel filters syscalls (default profile: Docker's)")


def check_device_control() -> Check:
    """v1: the devices controller; v2: a BPF_PROG_TYPE_CGROUP_DEVICE program per cgroup."""
    from labkit.cgroups import detect_mode
    from labkit.cgroups.v1 import controller_mounts
    from labkit.errors import HostError

    try:
        mode = detect_mode()
    except HostError as error:
        return Check("device control", False, str(error))
    if mode == "v1":
        point = controller_mounts().get("devices")
        if point is None:
            return Check("device control", False, "no cgroup v1 devices hierarchy",
                         "mount the devices controller: mount -t cgroup -o devices devices /sys/fs/cgroup/devices")
        return Check("device control", True, f"cgroup v1 devices controller at {point}")
    from labkit.cgroups import device_filter

    why_not = device_filter.supported()
    if why_not:
        return Check("device control", False, why_not, "a kernel with CONFIG_CGROUP_BPF (4.15 or newer)")
    return Check("device control", True, "cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program per container")


def check_overlay() -> Check:
    with open("/proc/filesystems") as handle:
        have = any(line.split()[-1] == "overlay" for line in handle if line.strip())
    return Check("overlay filesystem", have, "overlayfs available" if have else "overlayfs not loaded",
                 "" if have else "modprobe overlay")


def check_busybox() -> Check:
    from labkit.errors import HostError
    from labkit.images import Store
    from labkit.images.busybox import find_static_busybox

    if "busybox" in Store().names():
        return Check("base image", True, "busybox image present")
    try:
        path = find_static_busybox()
    except HostError as error:
        return Check("base image", False, str(error), "apt-get install busybox-static")
    return Check("base image", True, f"will be built from {path} on first use")


def check_vm() -> Check:
    try:
        from labkit.vm import status
    except ImportError:
        return Check("virtual machines", False, "labkit.vm is not installed", required=False)
    try:
        report = status()
    except Exception as error:  # noqa: BLE001 — doctor reports, it does not crash
        return Check("virtual machines", False, f"{type(error).__name__}: {error}", required=False)
    ok = bool(getattr(report, "ok", None) if not isinstance(report, dict) else report.get("ok"))
    text = getattr(report, "detail", None) if not isinstance(report, dict) else report.get("detail")
    fix = getattr(report, "fix", "") if not isinstance(report, dict) else report.get("fix", "")
    return Check("virtual machines", ok, str(text or report), fix or "", required=False)


def format_table(rows) -> str:
    width = max(len(row.what) for row in rows)
    lines = []
    for row in rows:
        mark = "ok " if row.ok else ("MISSING" if row.required else "absent")
        line = f"{row.what:<{width}}  {mark:<7}  {row.detail}"
        if not row.ok and row.fix:
            line += f"\n{'':<{width}}  {'':<7}  → {row.fix}"
        lines.append(line)
    return "\n".join(lines)
