"""The messages between the client (runtime/client/helper_client.py) and the helper
(runtime/helper/zygote.py): one declaration both sides use, so that a misspelled
operation or field fails at once. Shared: it is the format of that crossing.

One JSON object per SOCK_SEQPACKET datagram; stdio file descriptors travel with a
`start` or `exec` request as SCM_RIGHTS, named by its `fd_names`.

Client → helper: start, exec, release, signal, kill, remove, ping, shutdown.
Helper → client: held, started, exited, failed, removed, pong.
"""

import enum
import json

MAX_MESSAGE = 1 << 20
FD_NAMES = ("stdin", "stdout", "stderr")


class Op(str, enum.Enum):
    # requests
    START = "start"          # make a container from a StartPlan
    EXEC = "exec"            # run a process inside a running container (ExecPlan)
    RELEASE = "release"      # let a held container go on to its command
    SIGNAL = "signal"        # send a signal to a container's (or exec's) first process
    KILL = "kill"            # SIGKILL all of it
    REMOVE = "remove"        # remove a stopped container's directories
    PING = "ping"
    SHUTDOWN = "shutdown"
    # events and answers
    HELD = "held"            # created, waiting for release (the network is attached meanwhile)
    STARTED = "started"      # the command was exec'd
    EXITED = "exited"
    FAILED = "failed"        # a request could not be carried out
    REMOVED = "removed"
    PONG = "pong"


# The fields of each message besides "op" (all of them required, no others allowed).
FIELDS = {
    Op.START: {"id", "plan", "fd_names"},
    Op.EXEC: {"id", "plan", "fd_names"},
    Op.RELEASE: {"id"},
    Op.SIGNAL: {"id", "signal"},
    Op.KILL: {"id"},
    Op.REMOVE: {"id", "dir"},
    Op.PING: {"id", "settle"},   # settle: answer once every exited container is torn down
    Op.SHUTDOWN: set(),
    Op.HELD: {"id", "pid", "cgroup"},
    Op.STARTED: {"id", "pid", "setup_seconds", "cgroup", "slot"},   # cgroup: its name; slot: a pool slot served it
    Op.EXITED: {"id", "status", "error", "pid", "stats"},
    Op.FAILED: {"id", "error", "errno"},
    Op.REMOVED: {"id"},
    Op.PONG: {"id", "pid", "ready_slots", "pool_size"},   # ready_slots: cgroup names of the slots a start would get now; pool_size: how many it keeps
}


class ProtocolError(ValueError):
    pass


def message(op: Op, **fields) -> dict:
    """A message as declared above; raises ProtocolError on a wrong field."""
    _check(Op(op), fields)
    return {"op": Op(op).value, **fields}


def encode(op: Op, **fields) -> bytes:
    return json.dumps(message(op, **fields)).encode()


def decode(data: bytes) -> dict:
    """The message in `data`, checked against the declaration; "op" becomes an Op."""
    raw = json.loads(data)
    try:
        op = Op(raw.pop("op"))
    except (KeyError, ValueError):
        raise ProtocolError(f"unknown operation in message {data[:200]!r}") from None
    _check(op, raw)
    raw["op"] = op
    return raw


def _check(op, fields):
    expected = FIELDS[op]
    unknown, missing = sorted(set(fields) - expected), sorted(expected - set(fields))
    if unknown or missing:
        raise ProtocolError(f"{op.value} message: unknown field(s) {unknown}, missing field(s) {missing}")
