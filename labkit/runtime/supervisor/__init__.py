"""What runs in a container's supervisor: the helper's child, on the host, that makes the
namespaces, forks the container's first process and reports its PID and exit status.

    supervise.py    a container's supervisor (start)
    namespaces.py   the namespaces it makes or joins, the --userns uid/gid map
    exec.py         an `exec`'s supervisor: joins a running container, forks the command
    slot.py         a ready slot's supervisor: made ahead, before any plan exists

The helper forks into these; they fork into runtime/inside/ and never import the helper.
"""
