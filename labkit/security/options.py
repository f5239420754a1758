"""Docker's security options, checked and turned into what the runtime applies.

    --privileged                      all capabilities, no seccomp, every device (and no
                                      masked /proc paths)
    --security-opt seccomp=unconfined no seccomp filter
    --security-opt seccomp=FILE.json  that profile instead of the default one
    --security-opt no-new-privileges  execve may not gain privileges (setuid bits, file caps)
    --cap-add CAP|ALL, --cap-drop CAP|ALL

`security_plan(spec)` is the part of the launch plan that crosses to the helper: which
capabilities the container keeps, which seccomp profile (the helper compiles it once per
profile and capability set: labkit.security.compiled), and no_new_privs.
`device_rules(spec)` is what its cgroup allows.
"""

from dataclasses import dataclass

from labkit.errors import ConfigError

SUPPORTED = "seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges[=true|false]"


@dataclass
class SecurityOptions:
    seccomp: object = "default"        # "default", "unconfined", or a seccomp.Profile
    no_new_privileges: bool = False


def parse_security_opts(values, seccomp="default", no_new_privileges=False) -> SecurityOptions:
    """`--security-opt` values as Docker spells them (`=` or the older `:`)."""
    options = SecurityOptions(seccomp, bool(no_new_privileges))
    for value in values:
        key, separator, argument = _split(value)
        if key == "seccomp" and separator and argument:
            options.seccomp = argument
        elif key == "no-new-privileges":
            if argument not in ("", "true", "false"):
                raise ConfigError(f"--security-opt {value!r}: no-new-privileges takes true or false, not {argument!r}")
            options.no_new_privileges = argument != "false"
        elif key in ("apparmor", "label", "systempaths", "mask", "unmask"):
            raise ConfigError(f"--security-opt {value!r}: labkit has no {key} support; it understands {SUPPORTED}")
        else:
            raise ConfigError(f"--security-opt {value!r} is not understood; labkit understands {SUPPORTED}")
    options.seccomp = _seccomp_profile(options.seccomp)
    return options


def _split(value):
    text = str(value)
    positions = [p for p in (text.find("="), text.find(":")) if p >= 0]
    if not positions:
        return text, "", ""
    at = min(positions)
    return text[:at], text[at], text[at + 1:]


def _seccomp_profile(value):
    if value in ("default", "unconfined"):
        return value   # the helper compiles "default" (labkit.security.compiled): no libseccomp tables here
    from labkit.linux import seccomp

    if isinstance(value, seccomp.Profile):
        return value
    if isinstance(value, dict):
        return seccomp.Profile.from_json(value, source="given as a dict")
    try:
        return seccomp.Profile.load(value)
    except ConfigError as error:
        raise ConfigError(f"--security-opt seccomp={value}: {error}") from None


def capability_set(cap_add, cap_drop, privileged=False) -> set:
    """Docker's arithmetic: the default 14 (every one with --privileged), minus --cap-drop,
    plus --cap-add (an add wins over a drop of the same name); ALL means every capability."""
    from labkit.linux.capabilities import CONTAINER_DEFAULT, NAMES

    adds, drops = set(cap_add), set(cap_drop)
    if "all" in adds:
        caps = set(NAMES)
    elif "all" in drops:
        caps = set()
    else:
        caps = set(NAMES) if privileged else set(CONTAINER_DEFAULT)
    caps -= drops - {"all"}
    caps |= adds - {"all"}
    return caps


def capability_name(name, option) -> str:
    """'SYS_ADMIN', 'cap_sys_admin', 'ALL' -> 'sys_admin' / 'all'; unknown ones refused naming the option."""
    from labkit.linux.capabilities import NAMES

    bare = str(name).lower().removeprefix("cap_")
    if bare != "all" and bare not in NAMES:
        raise ConfigError(f"{option} {name!r}: unknown capability; e.g. SYS_ADMIN, NET_ADMIN, SYS_TIME, or ALL")
    return bare


@dataclass
class SecurityPlan:
    """The process's part of the launch plan (labkit.runtime.plan.ProcessPlan.security):
    the same for a container's first process and for every exec into it."""
    privileged: bool
    capabilities: list               # names kept in the bounding set ("chown", …)
    seccomp: object                  # None (unconfined), "default", or a profile in Docker's JSON
    no_new_privileges: bool
    seccomp_program: bytes | None = None   # the helper's part: the BPF libseccomp compiled


def security_plan(spec) -> SecurityPlan:
    """The security part of the plan for a validated ContainerSpec."""
    seccomp = None if spec.privileged or spec.seccomp == "unconfined" else spec.seccomp
    if seccomp is not None and seccomp != "default":
        seccomp = seccomp.to_json()
    return SecurityPlan(privileged=spec.privileged,
                        capabilities=sorted(capability_set(spec.cap_add, spec.cap_drop, spec.privileged)),
                        seccomp=seccomp,
                        no_new_privileges=spec.no_new_privileges)


def device_rules(spec):
    """Docker's allow-list for the container's cgroup; None (every device) when privileged."""
    from labkit.cgroups.devices import DOCKER_DEFAULT

    return None if spec.privileged else list(DOCKER_DEFAULT)
