"""Solutions to the tour notebooks' exercises (notebooks/00-08), for instructors and for
tests/test_notebook_exercises.py, which runs every self-check on them. They live here,
outside notebooks/, so that a student working in notebooks/ does not see them.

Keys: notebook file name, then the `exercise` name in the answer cell's metadata; the
value replaces the answer cell's source.
"""

SOLUTIONS = {
    "07-containers-vs-vms.ipynb": {
        "timens-options": 'my_options = "--timens 3600 --hostname guest"',
        "own-or-kernel": 'my_answer = {"hostname", "loopback MTU"}',
        "explain-kernel": (
            'my_explanation = """A container is a host process: every system call it makes goes to the '
            "host's kernel, the only one running. An image brings its own userland but never a kernel, so a "
            "program that needs a newer kernel gets ENOSYS in every container. Docker Desktop runs a Linux VM "
            '(WSL 2 or Hyper-V) and the containers share that VM\'s Linux kernel."""'
        ),
    },
    "08-security.ipynb": {
        "keyring-not-mount": 'my_option = "--security-opt seccomp=unconfined"',
        "mknod-refused-by-namespace": 'my_options = "--userns"',
        "explain-privileged": (
            'my_explanation = """The PID namespace is still there: the container names only its own '
            "processes, so the host's are out of reach. But a namespace only decides what the container can "
            "name; with every capability, no seccomp and every device, it can still call into the shared "
            'kernel and change it."""'
        ),
    },
}
