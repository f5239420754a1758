"""Solutions to the tour notebooks' exercises (notebooks/00-08), for instructors and for
tests/test_notebook_exercises.py, which runs every self-check on them. They live here,
outside notebooks/, so that a student working in notebooks/ does not see them.

Keys: notebook file name, then the `exercise` name in the answer cell's metadata; the
value replaces the answer cell's source.
"""

SOLUTIONS = {
    "00-start-here.ipynb": {
        "hostname-options": 'my_options = "--hostname student"',
        "trap-sigterm": """my_command = "sh -c 'trap \\"echo got TERM; exit 0\\" TERM; while :; do sleep 0.1; done'\"""",
        "explain-stop": (
            'my_explanation = """PID 1 of a PID namespace only receives signals it has a handler for; a plain '
            "program installs no handler for SIGTERM, so the kernel drops docker stop's SIGTERM and Docker waits "
            '10 s before SIGKILL, which always arrives from the host. --init runs tini as PID 1, which has a '
            'handler and forwards the signal to the program."""'
        ),
    },
    "01-namespaces.ipynb": {
        "userns-options": 'my_options = "--userns"',
        "host-net-options": 'my_options = "--net host"',
        "explain-pid-namespace": (
            'my_explanation = """unshare(CLONE_NEWPID) does not move the caller: only its children are born in '
            "the new PID namespace. PID 1 is the first child born in it, so the namespace must exist before "
            'PID 1 does: its parent, the helper, makes it and forks PID 1 into it."""'
        ),
    },
    "02-pid-and-mount.ipynb": {
        "mount-inside": 'my_command = "mkdir -p /mnt/notes && mount -t tmpfs notes /mnt/notes"\nmy_host_sees = False',
        "sleeper-pids": "my_guess = [2, 3]",
        "explain-propagation": (
            'my_explanation = """A new mount namespace copies the mount table, and each copied mount keeps its '
            "propagation: under a shared mount the copy is in the same peer group, so a mount made inside "
            'appears on the host too. Private propagation takes the copies out of the peer group."""'
        ),
    },
    "03-network.ipynb": {
        "third-listener": "my_prediction = True",
        "quiet-namespace": 'my_command = "nsenter --net={b} sysctl -q -w net.ipv4.icmp_echo_ignore_all=1"',
        "explain-sysctl": (
            'my_explanation = """Settings under net belong to a network namespace, so each container has its '
            "own copy; printk_ratelimit_burst is one per kernel, shared by everyone. The container's /proc/sys is "
            'read-only, and docker run --sysctl sets only namespaced ones, from outside, before the command."""'
        ),
    },
    "04-cgroups-memory.ipynb": {
        "limit-and-kill": 'my_limit = "20m"\nmy_kill_at_mib = 20',
        "limit-bytes": "my_bytes = 48 * 1024 * 1024",
        "explain-oom": (
            'my_explanation = """Every page a process in the cgroup touches is a charge against the limit. At the '
            "limit the kernel first reclaims, and when nothing can be reclaimed it refuses the charge and the OOM "
            'killer picks a victim by its badness score, tail or the shell, so usage never passes the limit."""'
        ),
    },
    "05-cgroups-cpu-and-pids.ipynb": {
        "quota-prediction": "my_cpu_seconds = 0.25\nmy_throttled = 10",
        "bomb-prediction": "my_pids_current = 8",
        "explain-quota": (
            'my_explanation = """A quota is a ceiling, not a reservation: it stops the cgroup from running more, '
            "but other work on a busy host can still take the CPU, so getting less proves nothing about the "
            'limit. Only a weight (cpu.weight or cpu.shares) or a dedicated CPU gives it a share."""'
        ),
    },
    "06-union-fs-and-layers.ipynb": {
        "copy-up-entries": 'my_prediction = {"etc", "etc/group"}',
        "whiteout": 'my_prediction = ("whiteout", True)',
        "explain-init-layer": (
            'my_explanation = """The init layer holds only an empty placeholder, and the real file is a bind '
            "mount from the container's directory, so the edit goes there and never reaches the read-write layer "
            "that commit keeps. Writing the file into the init layer instead would mean rewriting a lower layer of "
            'a mounted overlay for every new peer, which overlayfs leaves undefined."""'
        ),
    },
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
