"""A container's lifecycle, the one record of where it is (the OCI runtimes' vocabulary):

    configured ──start──▶ created ──helper: started──▶ running ──exit, stop, kill──▶ exited
        │                   │  └──────────setup failed, interrupted───────────────────▲ │
        │                   └──helper refused──▶ removed ◀──────────────remove─────────┘
        └──────────────remove (never started)───────▲

`created`: the helper has the request; from here an interrupt must kill and collect.
`running`: its first process runs (or its setup failed and the exit is on its way).
`exited`: the Result is known. `removed`: nothing of it is left on disk. The helper
writes `created` and `exited` into state.json with the same names.

Shared: the client keeps a container's Lifecycle; the helper writes the same state names.
"""

from labkit.errors import ContainerError

CONFIGURED, CREATED, RUNNING, EXITED, REMOVED = "configured", "created", "running", "exited", "removed"

TRANSITIONS = {
    CONFIGURED: {CREATED, REMOVED},
    CREATED: {RUNNING, EXITED, REMOVED},
    RUNNING: {EXITED},
    EXITED: {REMOVED},
    REMOVED: set(),
}


class IllegalTransition(ContainerError):
    """A step the lifecycle does not have: a bug in the runtime, not a user's mistake."""


class Lifecycle:
    def __init__(self, name: str):
        self.name = name
        self.state = CONFIGURED

    def to(self, new: str) -> None:
        if new not in TRANSITIONS[self.state]:
            allowed = ", ".join(sorted(TRANSITIONS[self.state])) or "nothing"
            raise IllegalTransition(f"container {self.name} cannot go from {self.state} to {new} "
                                    f"(from {self.state}: {allowed})")
        self.state = new

    def __repr__(self):
        return f"<Lifecycle {self.name} {self.state}>"
