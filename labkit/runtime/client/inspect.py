"""`inspect`: a container described with the keys of `docker inspect`, so that what a
student reads in Docker's documentation (State.ExitCode, Config.Cmd, HostConfig.Memory...)
is where they look here too.

Runs in the caller: `%container inspect` describes a Container object of the kernel; a
`labkit run -d` container's monitor (runtime/client/monitor.py) writes the same record
into inspect.json, which `labkit inspect` reads; any other container is described from its
state.json alone (`from_state`).
"""

import datetime
import os
import signal

# Docker's words for a container's state (State.Status).
STATUS = {"configured": "created", "created": "created", "running": "running", "exited": "exited",
          "removed": "removing", "orphaned": "dead"}


def timestamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC with nanoseconds, as Docker writes times; "0001-01-01T00:00:00Z"
    (Go's zero time, Docker's "never") for None."""
    if seconds is None:
        return "0001-01-01T00:00:00Z"
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(seconds * 1e9) % 1_000_000_000:09d}Z"


def exited_state(result) -> dict:
    """State's fields once the container has exited (Result: labkit.runtime.client.result)."""
    return {"Status": "exited", "Running": False, "Pid": 0, "ExitCode": result.returncode if result else 137,
            "OOMKilled": bool(result and result.oom_killed), "Error": (result.error or "") if result else "",
            "FinishedAt": timestamp(_now())}


def _now() -> float:
    import time

    return time.time()


def describe(container, auto_remove=False) -> dict:
    """The record of a Container object (this process's), as `docker inspect` lays it out."""
    spec, config = container.spec, container.image.config
    result = container.result
    state = {"Status": STATUS.get(container.state, container.state), "Running": container.state == "running"
             and result is None, "Paused": False, "Restarting": False, "OOMKilled": False, "Dead": False,
             "Pid": container.pid or 0, "ExitCode": 0, "Error": "", "StartedAt": timestamp(_now()),
             "FinishedAt": timestamp(None)}
    if result is not None:
        state.update(exited_state(result))
    network = container.network
    ports = {}
    for port in getattr(network, "ports", None) or []:
        mapping = port.mapping
        ports.setdefault(f"{mapping.container_port}/{mapping.protocol}", []).append(
            {"HostIp": mapping.host_ip, "HostPort": str(mapping.host_port)})
    return {
        "Id": container.id,
        "Name": "/" + container.name,   # Docker's leading slash
        "Created": timestamp(_now()),
        "Path": container.command[0] if container.command else "",
        "Args": container.command[1:],
        "State": state,
        "Image": container.image.name,
        "Config": {
            "Hostname": container.hostname, "User": spec.user if spec.user is not None else config.user,
            "Env": container._process_plan().env, "Cmd": spec.command or config.cmd,
            "Entrypoint": ([spec.entrypoint] if spec.entrypoint else None) if spec.entrypoint is not None
            else config.entrypoint,
            "Image": container.image.name, "WorkingDir": spec.workdir or config.workdir or "/",
            "Labels": dict(config.labels), "StopSignal": config.stop_signal or "SIGTERM",
            "ExposedPorts": {port: {} for port in config.exposed_ports},
        },
        "HostConfig": {
            "Memory": spec.memory or 0, "NanoCpus": int(float(spec.cpus) * 1e9) if spec.cpus else 0,
            "PidsLimit": spec.pids or 0, "NetworkMode": str(spec.network.kind if hasattr(spec.network, "kind")
                                                            else spec.network),
            "Privileged": spec.privileged, "ReadonlyRootfs": spec.read_only, "AutoRemove": auto_remove,
            "CapAdd": list(spec.cap_add) or None, "CapDrop": list(spec.cap_drop) or None,
            "SecurityOpt": list(spec.security_opt) or None, "Init": spec.init,
            "Tmpfs": dict(_tmpfs(entry) for entry in spec.tmpfs) or None,
            "PortBindings": {key: [{"HostIp": b["HostIp"], "HostPort": b["HostPort"]} for b in value]
                             for key, value in ports.items()},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": str(spec.log_max_size or ""),
                                                          "max-file": str(spec.log_max_files or "")}},
        },
        "Mounts": [{"Type": "bind", "Source": volume.source, "Destination": volume.target, "Mode": "",
                    "RW": not volume.readonly, "Propagation": "rprivate"} for volume in spec.volumes],
        "NetworkSettings": {
            "IPAddress": getattr(network, "ip", None) or "", "Gateway": getattr(network, "gateway", None) or "",
            "IPPrefixLen": getattr(network, "prefixlen", None) or 0, "Ports": ports,
            "SandboxKey": container.netns or "",
        },
        "LogPath": str(container.files.log("stdout")),
        "Labkit": {"Dir": str(container.dir), "Cgroup": container.cgroup_name or "", "Owner": os.getpid()},
    }


def _tmpfs(entry) -> tuple:
    path, _, options = str(entry).partition(":")
    return path, options


def from_state(state: dict) -> dict:
    """The record of a container known only from its state.json (one a notebook kernel
    started): what the helper wrote, in the same keys, with empty ones where it says nothing."""
    raw = state.get("exit_status")
    exited = state.get("status") == "exited"
    code = 0
    if exited and raw is not None:
        code = os.waitstatus_to_exitcode(raw)
        code = code if code >= 0 else 128 + -code
    command = state.get("command") or []
    return {
        "Id": state.get("id"), "Name": "/" + str(state.get("name")),
        "Created": timestamp(state.get("created")), "Path": command[0] if command else "", "Args": command[1:],
        "State": {"Status": STATUS.get(state.get("status"), state.get("status")),
                  "Running": state.get("status") == "running", "Paused": False, "Restarting": False,
                  "OOMKilled": False, "Dead": state.get("status") == "orphaned", "Pid": 0, "ExitCode": code,
                  "Error": "", "StartedAt": timestamp(state.get("created")), "FinishedAt": timestamp(None)},
        "Image": state.get("image"), "Config": {"Image": state.get("image"), "Cmd": command},
        "HostConfig": {}, "Mounts": [], "NetworkSettings": {},
        "Labkit": {"Dir": state.get("dir"), "Cgroup": state.get("cgroup"), "Owner": state.get("client_pid")},
    }


def signal_number(text: str) -> int:
    """`kill -s`'s value: KILL, SIGKILL or 9, as Docker takes it."""
    from labkit.errors import ConfigError

    text = str(text).strip().upper()
    if text.isdigit():
        number = int(text)
    else:
        try:
            number = signal.Signals[text if text.startswith("SIG") else "SIG" + text].value
        except KeyError:
            raise ConfigError(f"--signal {text!r} is not a signal (give a name such as TERM or KILL, "
                              "or a number)") from None
    if not 0 < number < signal.NSIG:
        raise ConfigError(f"--signal {text!r} is not a signal number (1 to {signal.NSIG - 1})")
    return number
