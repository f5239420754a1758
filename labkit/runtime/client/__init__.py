"""What runs in the caller: the Jupyter kernel or the `labkit` command.

    container.py       Container: its lifecycle's verbs (run, start, wait, stop, kill, remove)
    exec_process.py    `exec`: one more process in a running container, on the caller's side
    network.py         what labkit.net is asked for a container: prepare, attach, detach
    registry.py        the long-lived containers of this process, by name (`get`)
    helper_client.py   the client's end of the helper: start it, send requests, read events
    streams.py         the container's stdio: fds to hand it, its output read as it arrives
    result.py          Result, built from the helper's `exited` message
    state.py           every container's state.json read back; the sweep of dead owners'
    leftovers.py       the sweep with the network's part
    build_step.py      a build's RUN, run as a container

The client compiles the spec into a plan (runtime/plan.py) and sends it; it may import the
helper's package only to fork the helper from itself (`fork_from_caller`), and never what
runs in a supervisor or inside a container.
"""
