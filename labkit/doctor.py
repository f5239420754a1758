"""`labkit doctor`: what this host offers, and what to do about what it lacks.

As root it checks what a container needs; as an ordinary user it says what works
rootless (every namespace inside a user namespace, overlay, seccomp), what does not
(limits without a delegated cgroup, devices) and why, since labkit then makes
containers inside a user namespace of the caller's own.
"""

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

VM_KERNEL = "the VM kernel: `labkit lab --vm` (after `labkit vm setup`), root inside a VM with cgroup v2"


@dataclass
class Check:
    what: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    mark: str = ""  # printed instead of ok/MISSING/absent, e.g. "off" for limits a rootless container goes without


def diagnose() -> list:
    rootless = not privileged()
    rows = [check_rootless() if rootless else check_root()]
    rows += check_namespaces(rootless)
    rows += check_cgroups(rootless)
    rows.append(check_seccomp())
    rows.append(check_device_control(rootless))
    if rootless:
        rows.append(check_rootless_network())
    rows.append(check_overlay())
    if rootless:
        rows.append(check_rootless_overlay())
    rows.append(check_busybox())
    rows.append(check_vm())
    rows.append(check_vm_kernel())
    return rows


def privileged() -> bool:
    """Root in the host's user namespace: what labkit needs to make containers without
    a user namespace of its own."""
    return os.geteuid() == 0


def check_root() -> Check:
    from labkit.linux import capabilities

    missing = {"sys_admin", "net_admin", "sys_chroot", "mknod"} - capabilities.of_process()["CapEff"]
    if missing:
        return Check("capabilities", False, "missing " + ", ".join(sorted(missing)),
                     "run with full capabilities (e.g. docker run --privileged)")
    return Check("root", True, "uid 0 with CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_MKNOD")


def check_rootless() -> Check:
    """An ordinary user: labkit makes a user namespace first and is root inside it, with
    the user's /etc/subuid range mapped by newuidmap, or only their own uid without one."""
    from labkit.linux.namespaces import available_namespaces

    uid = os.geteuid()
    refused = available_namespaces()["user"]
    if refused is not None:
        detail, fix = refusal_cause("user", refused, _own_status())
        return Check("rootless", False, f"uid {uid}: no user namespace, so no container: {detail}", fix)
    from labkit.linux.rootless import free_subid_range, id_maps

    name = _user_name(uid)
    uid_map, gid_map, why_one_id = id_maps()
    if why_one_id is None:
        ranges = ", ".join(f"{first}-{first + count - 1}" for _, first, count in uid_map.lines[1:])
        return Check("rootless", True, f"uid {uid} ({name}): containers run in a user namespace whose root is "
                                       f"uid {uid}; its other {uid_map.size - 1} ids are your /etc/subuid "
                                       f"range {ranges}, mapped by newuidmap")
    return Check("rootless", True,
                 f"uid {uid} ({name}): containers run in a user namespace with your uid alone as root inside; "
                 f"other ids (chown, USER in a Dockerfile) fail: {why_one_id}",
                 f"as root, once: apt-get install uidmap; usermod --add-subuids {free_subid_range()} "
                 f"--add-subgids {free_subid_range()} {name} (a range no other user has)")


def _user_name(uid) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_namespaces(rootless=False) -> list:
    """Each kind as labkit would make it: by itself as root; as an ordinary user together
    with a new user namespace (unshare(CLONE_NEWUSER | kind)), which is how a rootless
    container gets them and the only way they work without CAP_SYS_ADMIN."""
    from labkit.linux.namespaces import NAMESPACES, available_namespaces

    inside = rootless and available_namespaces()["user"] is None
    found = available_namespaces(inside_user_namespace=inside)
    status = _own_status()
    rows = []
    for ns in NAMESPACES:
        reason = found.get(ns.name)
        optional = ns.name in ("user", "time")
        detail, fix = f"{ns.flag_name}: {ns.isolates}", ""
        if inside and ns.name != "user":
            detail += " (inside your user namespace)"
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
    vm_kernel = ("use the VM kernel: `labkit lab --vm`, or pick \"Python 3 (labkit in a VM)\" in Jupyter "
                 "(so on Binder, which never gives root and refuses user namespaces)")
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
    """(True, "") when labkit can make containers here: as root with CAP_SYS_ADMIN, every
    namespace but the optional user and time ones; as an ordinary user, a user namespace
    and every required kind inside it (rootless). Else (False, why), for `labkit lab` to
    choose the VM kernel."""
    from labkit.linux import capabilities
    from labkit.linux.namespaces import available_namespaces

    found = available_namespaces()
    refused = {kind: reason for kind, reason in found.items() if reason is not None}
    required = {kind: reason for kind, reason in refused.items() if kind not in ("user", "time")}
    privileged = os.geteuid() == 0 and "sys_admin" in capabilities.of_process()["CapEff"]
    if privileged and not required:
        return True, ""
    if not privileged and "user" not in refused:
        inside = {kind: reason for kind, reason in available_namespaces(inside_user_namespace=True).items()
                  if reason is not None and kind not in ("user", "time")}
        if not inside:
            return True, ""
        kind = sorted(inside)[0]
        return False, f"namespace {kind}, even inside a user namespace: {inside[kind]}"
    if refused.keys() - {"time"}:
        kind = "user" if "user" in refused else sorted(required)[0]
        detail, _ = refusal_cause(kind, refused[kind], _own_status())
        return False, f"namespace {kind}: {detail}"
    return False, f"labkit makes containers as root with CAP_SYS_ADMIN, and this process (uid {os.geteuid()}) is not"


def check_vm_kernel() -> Check:
    usable, why = namespaces_usable()
    if usable and not privileged():
        return Check("VM kernel", True, "not needed: containers can be made rootless on this host; it gives "
                                        "them what rootless lacks here (limits, devices): `labkit lab --vm`",
                     required=False)
    if usable:
        return Check("VM kernel", True, "not needed: containers can be made on this host", required=False)
    return Check("VM kernel", False, f"containers cannot be made here ({why})",
                 "labkit lab --vm (after labkit vm setup): the kernel runs in a VM with cgroup v2, root inside",
                 required=False)


LIMIT_CONTROLLERS = {"memory": "memory", "cpu": "cpu", "pids": "pids", "io": "blkio"}  # kind: v1 hierarchy


def check_cgroups(rootless=False) -> list:
    from labkit.cgroups import detect_mode, host_hierarchy
    from labkit.errors import HostError

    try:
        mode = detect_mode()
        hierarchy = host_hierarchy()
    except HostError as error:
        return [Check("cgroups", False, str(error), "mount cgroup2 on /sys/fs/cgroup")]
    rows = [Check("cgroup mode", True, f"{mode}" + (" (legacy/hybrid: one hierarchy per controller)" if mode == "v1" else " (unified)"))]
    if rootless:
        return rows + (rootless_limits_v2(delegated_subtree()) if mode == "v2" else rootless_limits_v1())
    for kind in LIMIT_CONTROLLERS:
        have = kind in hierarchy.controllers
        rows.append(Check(f"cgroup {kind}", have, "controller available" if have else "controller missing",
                          "" if have else f"enable the {kind} controller (cgroup_enable=, or subtree_control)",
                          required=kind != "io"))
    return rows


NO_LIMITS_FIX = ("a cgroup v2 host with systemd, which delegates each user's session subtree "
                 "(Delegate=yes for user@.service), or " + VM_KERNEL)


def rootless_limits_v1() -> list:
    """cgroup v1 has no delegation: an ordinary user may write a cgroup only where root
    chowned one, and labkit does not use that; rootless containers run without limits."""
    from labkit.cgroups.v1 import controller_mounts

    uid, mounts = os.geteuid(), controller_mounts()
    rows = []
    for kind, hierarchy in LIMIT_CONTROLLERS.items():
        if hierarchy not in mounts:
            rows.append(Check(f"cgroup {kind}", False, "controller missing", required=False))
            continue
        own = own_cgroup_dir(hierarchy, mounts[hierarchy])
        writable = own is not None and writable_cgroup(own)
        who = (f"uid {uid} may write its own cgroup {own}, which root chowned to it, but"
               if writable else f"uid {uid} can write no cgroup in it:")
        rows.append(Check(f"cgroup {kind}", False,
                          f"controller present; {who} cgroup v1 has no delegation, so rootless containers "
                          f"run without {kind} limits (every limit option says so)",
                          NO_LIMITS_FIX, required=False, mark="off"))
    return rows


def rootless_limits_v2(subtree) -> list:
    """`subtree` is delegated_subtree()'s (directory, writable, controllers)."""
    directory, writable, controllers = subtree
    uid = os.geteuid()
    rows = []
    from labkit.cgroups import limits_available

    used, why_not = limits_available()
    for kind in LIMIT_CONTROLLERS:
        if writable and kind in controllers and used:
            rows.append(Check(f"cgroup {kind}", True, f"delegated to uid {uid} in {directory}", required=False))
        elif writable and kind in controllers:
            rows.append(Check(f"cgroup {kind}", False, f"delegated to uid {uid} in {directory}, but {why_not}",
                              required=False, mark="off"))
        elif writable:
            rows.append(Check(f"cgroup {kind}", False,
                              f"{directory} is delegated to uid {uid} but its cgroup.controllers lacks {kind}: "
                              f"rootless containers run without {kind} limits",
                              f"as root: add {kind} to DelegateControllers= (or the parent's cgroup.subtree_control)",
                              required=False, mark="off"))
        else:
            rows.append(Check(f"cgroup {kind}", False,
                              f"uid {uid} cannot write its cgroup {directory} (not delegated): rootless "
                              f"containers run without {kind} limits", NO_LIMITS_FIX, required=False, mark="off"))
    return rows


def delegated_subtree(mount=None):
    """(the directory rootless containers' cgroups go below, whether it is delegated to this
    uid, the controllers its cgroup.controllers offers), as the runtime decides it
    (labkit.cgroups.delegation.host_delegation: the highest cgroup, from this process's own
    up, that this uid owns with its cgroup.procs and cgroup.subtree_control). Not delegated:
    this process's own cgroup v2 directory, for the row. `mount`: a cgroup2 mount to look in
    (None: the host's)."""
    from labkit.cgroups.delegation import host_delegation, own_cgroup
    from labkit.cgroups.v2 import unified_mount

    delegation = host_delegation(mount=mount)
    if delegation.root:
        return Path(delegation.root), True, set(delegation.controllers)
    mount = mount or unified_mount() or "/sys/fs/cgroup"
    with open("/proc/self/cgroup") as handle:
        own = own_cgroup(handle.read())
    return Path(mount) / (own or "/").lstrip("/"), False, set()


def own_cgroup_dir(hierarchy, mount, proc_cgroup="/proc/self/cgroup"):
    """Where this process sits in the hierarchy named `hierarchy` ("" for v2) mounted at
    `mount`, from /proc/self/cgroup; None when it is not there."""
    if not mount:
        return None
    with open(proc_cgroup) as handle:
        for line in handle:
            _, names, path = line.rstrip("\n").split(":", 2)
            if hierarchy in names.split(",") or (hierarchy == names == ""):
                return Path(mount) / path.lstrip("/")
    return None


def writable_cgroup(directory) -> bool:
    """May this uid make child cgroups in `directory` and move its processes into them?
    That is what delegation grants: the directory and its cgroup.procs are the caller's."""
    procs = Path(directory) / ("cgroup.procs" if (Path(directory) / "cgroup.procs").exists() else "tasks")
    return os.access(directory, os.W_OK | os.X_OK) and os.access(procs, os.W_OK)


def check_rootless_network() -> Check:
    """What a container without root gets besides loopback: the bridge (always), published
    TCP ports on it (the owner's proxy, always), and a way out (pasta, and nft for the
    masquerade inside the bridge's namespace: labkit.net.rootless_bridge)."""
    import shutil

    from labkit.net.rootless_bridge import nft_program

    missing = [name for name, found in (("pasta", shutil.which("pasta")), ("nft", nft_program())) if found is None]
    if "pasta" in missing:
        return Check("rootless network", False, "--net bridge (by name) and its -p TCP ports work; no outbound "
                     "traffic and no --net pasta: pasta is missing", "apt-get install passt nftables",
                     required=False)
    if missing:
        return Check("rootless network", False, "--net bridge with -p TCP ports, --net pasta; a bridge container "
                     "has no outbound traffic: nft is missing", "apt-get install nftables", required=False)
    return Check("rootless network", True, "--net bridge: by name, -p TCP ports, outbound through pasta; "
                 "--net pasta; no UDP ports")


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


def check_device_control(rootless=False) -> Check:
    """v1: the devices controller; v2: a BPF_PROG_TYPE_CGROUP_DEVICE program per cgroup."""
    from labkit.cgroups import detect_mode
    from labkit.cgroups.v1 import controller_mounts
    from labkit.errors import HostError

    if rootless:
        return Check("device control", True,
                     "not needed rootless: in a user namespace the kernel refuses mknod, so a container opens only "
                     "the device nodes bound in from the host; the mknod and device lessons need root",
                     required=False)
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


def check_rootless_overlay() -> Check:
    """Which overlay a rootless container's root gets (images/rootless_overlay.py: the
    kernel's where a probe mount in a user namespace works, else fuse-overlayfs)."""
    from labkit.errors import LabkitError
    from labkit.images.rootless_overlay import rootless_overlay

    try:
        choice = rootless_overlay(_rootless_home_if_made())
    except LabkitError as error:
        return Check("rootless overlay", False, str(error),
                     "as root: apt-get install fuse-overlayfs; or boot Linux 5.11 or later")
    return Check("rootless overlay", True, f"containers' roots are {choice.why}")


def _rootless_home_if_made():
    """Where the probe mounts: the home's filesystem (that of the containers' layers) if
    it exists, else the temp dir; doctor makes no home."""
    home = os.environ.get("LABKIT_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "labkit")
    return home if os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK) else None


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
        mark = row.mark or ("ok " if row.ok else ("MISSING" if row.required else "absent"))
        line = f"{row.what:<{width}}  {mark:<7}  {row.detail}"
        if not row.ok and row.fix:
            line += f"\n{'':<{width}}  {'':<7}  → {row.fix}"
        lines.append(line)
    return "\n".join(lines)
