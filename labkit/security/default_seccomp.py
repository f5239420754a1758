"""labkit's default seccomp profile: equal in effect to Docker's default.

An allow-list: a syscall not named here fails with EPERM. What it leaves out, and why,
is the lesson (the kernel attack surface a root process in a container would otherwise
reach on a shared kernel):

- keyrings (`add_key`, `keyctl`, `request_key`): keys are not namespaced; without a
  user namespace a container would share host root's keyring;
- `unshare`, `setns`, `mount`, `umount2`, `pivot_root`, the new mount API, `bpf`,
  `perf_event_open`, `syslog`, `quotactl`…: allowed only to a container that was given
  CAP_SYS_ADMIN (or CAP_BPF, CAP_PERFMON, CAP_SYSLOG); `clone` may not make namespaces
  without CAP_SYS_ADMIN, and `clone3` (whose flags sit behind a pointer seccomp cannot
  read) answers ENOSYS so that libc falls back to `clone`;
- kernel modules, `reboot`, `acct`, `kexec_*`, `swapon`, `iopl`, clock setting, NUMA
  policy, `ptrace` and its relatives: each only with the capability it belongs to;
- `personality` only for the few values programs use (not ones that weaken ASLR);
- `socket` of AF_ALG (38) and AF_VSOCK (40): refused;
- io_uring (`io_uring_setup` and friends): refused, as Docker does since 25.0 (a
  steady source of kernel bugs, and it bypasses per-syscall filtering).

Written as labkit's own data after reading Docker's profile and documentation; a
profile in Docker's JSON format comes through `labkit.linux.seccomp.Profile.load`.
"""

# Allowed to every container, grouped by what the calls are for.
FILES = """
    open openat openat2 creat close close_range read readv pread64 preadv preadv2 write writev
    pwrite64 pwritev pwritev2 lseek _llseek dup dup2 dup3 fcntl fcntl64 flock ioctl
    stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx statfs statfs64
    fstatfs fstatfs64 access faccessat faccessat2 readlink readlinkat getdents getdents64
    getcwd chdir fchdir mkdir mkdirat mknod mknodat rmdir rename renameat renameat2 link
    linkat symlink symlinkat unlink unlinkat truncate truncate64 ftruncate ftruncate64
    fallocate fadvise64 fadvise64_64 readahead chmod fchmod fchmodat fchmodat2 chown chown32
    fchown fchown32 fchownat lchown lchown32 umask utime utimes utimensat utimensat_time64
    futimesat fsync fdatasync sync syncfs sync_file_range copy_file_range sendfile sendfile64
    splice tee vmsplice name_to_handle_at cachestat statmount listmount
    getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat
    listxattr llistxattr flistxattr listxattrat removexattr lremovexattr fremovexattr
    removexattrat
"""
WAITING = """
    poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64 epoll_create
    epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2
    eventfd eventfd2 inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
    fanotify_mark signalfd signalfd4 timerfd_create timerfd_settime timerfd_settime64
    timerfd_gettime timerfd_gettime64 pipe pipe2
    io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
"""
MEMORY = """
    brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall munlock
    munlockall remap_file_pages membarrier memfd_create memfd_secret pkey_alloc pkey_free
    pkey_mprotect map_shadow_stack mseal
"""
PROCESSES = """
    fork vfork execve execveat exit exit_group wait4 waitid waitpid getpid getppid gettid
    getpgid getpgrp setpgid getsid setsid set_tid_address set_robust_list get_robust_list
    rseq futex futex_time64 futex_waitv futex_wait futex_wake futex_requeue get_thread_area
    set_thread_area restart_syscall prctl capget capset getrlimit setrlimit ugetrlimit
    prlimit64 getrusage times sysinfo uname getcpu getrandom getpriority setpriority
    ioprio_get ioprio_set sched_yield sched_getaffinity sched_setaffinity sched_getattr
    sched_setattr sched_getparam sched_setparam sched_getscheduler sched_setscheduler
    sched_get_priority_max sched_get_priority_min sched_rr_get_interval
    sched_rr_get_interval_time64 pidfd_open pidfd_send_signal process_mrelease seccomp
    landlock_create_ruleset landlock_add_rule landlock_restrict_self uretprobe riscv_hwprobe
"""
IDENTITY = """
    getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid
    getresuid32 getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32
    setreuid setreuid32 setregid setregid32 setresuid setresuid32 setresgid setresgid32
    setfsuid setfsuid32 setfsgid setfsgid32 setgroups setgroups32
"""
SIGNALS = """
    kill tkill tgkill pause alarm getitimer setitimer sigaltstack sigprocmask sigreturn
    rt_sigaction rt_sigprocmask rt_sigpending rt_sigreturn rt_sigsuspend rt_sigqueueinfo
    rt_tgsigqueueinfo rt_sigtimedwait rt_sigtimedwait_time64
"""
# Reading clocks, sleeping, timers; adjtimex/clock_adjtime only change the clock with
# CAP_SYS_TIME, which the kernel checks itself.
TIME = """
    time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
    clock_nanosleep clock_nanosleep_time64 nanosleep adjtimex clock_adjtime clock_adjtime64
    timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64
"""
SOCKETS = """
    socketpair socketcall bind connect listen accept accept4 getsockname getpeername
    getsockopt setsockopt shutdown send sendto sendmsg sendmmsg recv recvfrom recvmsg
    recvmmsg recvmmsg_time64
"""
IPC = """
    ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl shmget
    shmat shmdt shmctl mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
    mq_timedreceive_time64 mq_notify mq_getsetattr
"""

# Allowed only to a container holding the capability (`--cap-add`, `--privileged`).
BY_CAPABILITY = {
    "CAP_SYS_ADMIN": """
        mount umount umount2 mount_setattr move_mount open_tree fsopen fsconfig fsmount fspick
        unshare setns clone clone3 sethostname setdomainname bpf perf_event_open
        fanotify_init lookup_dcookie quotactl quotactl_fd syslog
        lsm_get_self_attr lsm_set_self_attr lsm_list_modules
    """,
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "init_module finit_module delete_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd process_madvise",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy set_mempolicy set_mempolicy_home_node mbind",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
}

# Only on some machines (Docker's arch names).
BY_ARCH = [
    (("amd64", "x32"), "arch_prctl"),
    (("amd64", "x32", "x86"), "modify_ldt"),
    (("arm", "arm64"), "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
    (("ppc64le",), "sync_file_range2 swapcontext"),
    (("s390", "s390x"), "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    (("riscv64",), "riscv_flush_icache"),
]

# clone's flags argument: none of CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(2) values programs need: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
# and 0xffffffff (the query).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_ALG, AF_VSOCK = 38, 40
# Docker's archMap: the machine's own architecture and those its binaries may also use.
ARCHITECTURES = {
    "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"],
    "SCMP_ARCH_MIPS64": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
    "SCMP_ARCH_MIPS64N32": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
    "SCMP_ARCH_MIPSEL64": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
    "SCMP_ARCH_MIPSEL64N32": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
    "SCMP_ARCH_S390X": ["SCMP_ARCH_S390"],
    "SCMP_ARCH_RISCV64": [],
    "SCMP_ARCH_LOONGARCH64": [],
}


def _allow(names, **conditions):
    return {"names": names.split(), "action": "SCMP_ACT_ALLOW", **conditions}


def _argument(index, op, value):
    return {"index": index, "op": op, "value": value}


def default_profile() -> dict:
    """The profile in Docker's JSON format (what `--security-opt seccomp=FILE` reads)."""
    everyone = " ".join((FILES, WAITING, MEMORY, PROCESSES, IDENTITY, SIGNALS, TIME, SOCKETS, IPC))
    rules = [_allow(everyone)]
    # ptrace and cross-process memory became safe to allow from 4.8 (seccomp is
    # re-checked after a tracer changes the syscall).
    rules.append(_allow("ptrace process_vm_readv process_vm_writev", includes={"minKernel": "4.8"}))
    # socket(): every family below AF_ALG, AF_NFC (39), and every family above AF_VSOCK.
    rules += [_allow("socket", args=[_argument(0, "SCMP_CMP_LT", AF_ALG)]),
              _allow("socket", args=[_argument(0, "SCMP_CMP_EQ", AF_ALG + 1)]),
              _allow("socket", args=[_argument(0, "SCMP_CMP_GT", AF_VSOCK)])]
    rules += [_allow("personality", args=[_argument(0, "SCMP_CMP_EQ", value)]) for value in PERSONALITIES]
    rules += [_allow(names, includes={"arches": list(arches)}) for arches, names in BY_ARCH]
    rules += [_allow(names, includes={"caps": [cap]}) for cap, names in BY_CAPABILITY.items()]
    # Without CAP_SYS_ADMIN: clone without namespace flags (s390 swaps the first two
    # arguments), and clone3 answers ENOSYS.
    rules.append(_allow("clone", args=[{**_argument(0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS), "valueTwo": 0}],
                        excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}))
    rules.append(_allow("clone", args=[{**_argument(1, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS), "valueTwo": 0}],
                        includes={"arches": ["s390", "s390x"]}, excludes={"caps": ["CAP_SYS_ADMIN"]}))
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,  # ENOSYS
                  "excludes": {"caps": ["CAP_SYS_ADMIN"]}})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,  # EPERM
        "archMap": [{"architecture": arch, "subArchitectures": subs} for arch, subs in ARCHITECTURES.items()],
        "syscalls": rules,
    }
