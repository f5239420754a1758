"""What runs inside the guest: two busybox shell scripts and the per-run command.

Stage 1 (`/init`, in the initramfs) makes the host's root usable as the guest's root:
modules, a read-only 9p mount of `/`, a tmpfs overlay on top, the kernel filesystems,
cgroup v2. Stage 2 (PID 1 after `switch_root`) brings loopback up, runs the command and reports its exit
status on the console between two marker lines that carry a per-run random token,
so nothing the command prints can be mistaken for them.
"""

import shlex

START_MARKER = "LABKIT-VM-START-"
EXIT_MARKER = "LABKIT-VM-EXIT-"
# Where stage 1 leaves busybox and the run files for stage 2: a fresh tmpfs in the
# new root, so they cannot collide with anything from the host.
RUN_DIR = "/run/labkit"
ROOT_TAG = "hostroot"
RW_TAG = "labkitrw"
# Where a snapshot guest's copy of the kernel's files is seen (see stage1_init).
HOT_DIR = "/.labkit-hot"
# 9p over virtio carries at most ~500 KiB per message; bigger messages mean fewer
# round trips through the emulated device for every file read.
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000"

def stage1_init(root_cache="none", hot=False) -> str:
    """Stage 1's script. `root_cache` is the 9p cache mode of the host's read-only root:
    "none" reads every file from the host each time; "loose" lets the guest keep what it
    read (the VM kernel: a kernel's imports then come from guest memory after the first
    start, at the price of not seeing later changes to host files).

    `hot`: the root is a copy in guest memory of the files listed in the run archive's
    `hot_files` (what the VM kernel's warm agent reads), and the host's root is let go
    before stage 2, so that QEMU can save the guest (it refuses while a 9p export is
    mounted); the agent mounts the host's root after the restore (RESUME)."""
    # 9p's default is "none": the default script stays as it was (its fingerprint too).
    script = _STAGE1_INIT.replace("@ROOT_CACHE@", "" if root_cache == "none" else f",cache={root_cache}")
    if hot:
        start, end = script.index(_HOST_OVERLAY_FIRST), script.index(_HOST_OVERLAY_LAST) + len(_HOST_OVERLAY_LAST)
        script = script[:start] + _HOT_OVERLAY + script[end:]
    return script


_STAGE1_INIT = rf"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{
    echo "labkit-vm: $*"
    poweroff -f
}}

for module in /lib/modules/*.ko; do
    insmod "$module" || fail "could not load kernel module $module"
done

# virtio_pci probes the 9p device asynchronously: retry until the tag appears.
mkdir -p /lower /upper /newroot
tries=0
until mount -t 9p -o {NINEP_OPTIONS},ro@ROOT_CACHE@ {ROOT_TAG} /lower 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 200 ] || fail "the host's root (9p tag {ROOT_TAG}) never appeared"
    usleep 20000
done

# The host's root is read-only; a tmpfs on top takes every write and vanishes at
# power-off, so the guest can never change the host.
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work root /newroot \
    || fail "could not put an overlay over the host's root"

mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup || fail "could not mount cgroup2"
# Overlay upper dirs cannot live on an overlay: /tmp must be a real tmpfs for
# containers started inside the guest.
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mount -t tmpfs -o mode=0755 run /newroot/run

# Hand every controller to child cgroups, one at a time so that one refusal does not
# hide the others.
for controller in $(cat /newroot/sys/fs/cgroup/cgroup.controllers); do
    echo "+$controller" > /newroot/sys/fs/cgroup/cgroup.subtree_control \
        || echo "labkit-vm: could not enable the $controller controller"
done

# The kernel package's own modules, so modprobe works inside the guest.
if [ -s /labkit/modules_dir ] && [ -d "/newroot$(cat /labkit/modules_dir)" ]; then
    mkdir -p "/newroot/lib/modules/$(uname -r)"
    mount --bind "/newroot$(cat /labkit/modules_dir)" "/newroot/lib/modules/$(uname -r)"
fi

if [ -s /labkit/rw_dir ]; then
    rw_dir="$(cat /labkit/rw_dir)"
    mkdir -p "/newroot$rw_dir"
    mount -t 9p -o {NINEP_OPTIONS} {RW_TAG} "/newroot$rw_dir" \
        || fail "could not mount the shared directory $rw_dir"
fi

mkdir -p /newroot{RUN_DIR}
cp /bin/busybox /labkit/* /newroot{RUN_DIR}/
exec switch_root /newroot {RUN_DIR}/busybox sh {RUN_DIR}/stage2
"""

_HOST_OVERLAY_FIRST = "# The host's root is read-only; a tmpfs on top"
_HOST_OVERLAY_LAST = '|| fail "could not put an overlay over the host\'s root"\n'
_HOT_OVERLAY = rf"""# Snapshot mode: the files the warm agent reads are copied off the host's root into
# guest memory, then the host's root is let go: QEMU refuses to save a guest that has a
# 9p export mounted. The agent mounts the host's root again once restored (RESUME).
mkdir -p /hot
mount -t tmpfs -o mode=0755 hot /hot
(cd /lower && cpio -o -H newc < /labkit/hot_files) | (cd /hot && cpio -i -d -m) \
    || fail "could not copy the kernel's files off the host's root"
umount /lower || fail "could not let go of the host's root"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/hot,upperdir=/upper/data,workdir=/upper/work root /newroot \
    || fail "could not put an overlay over the kernel's files"
mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/run /newroot/root /newroot{HOT_DIR}
# RESUME layers the copy over the host's root.
mount --bind /hot /newroot{HOT_DIR}
"""

STAGE1_INIT = stage1_init()

STAGE2 = rf"""bb={RUN_DIR}/busybox
token="$($bb cat {RUN_DIR}/token)"
# Keep kernel messages (an OOM kill, say) out of the command's output; they stay in
# dmesg. Boot problems before this point still reach the console.
echo 1 > /proc/sys/kernel/printk
# The kernel brings no interface up by itself: without loopback, anything that talks
# to 127.0.0.1 (a Jupyter kernel's ZeroMQ sockets, a test server) waits forever.
$bb ip link set lo up || echo "labkit-vm: could not bring the loopback device up"
echo "{START_MARKER}$token"
$bb sh {RUN_DIR}/command < /dev/null
status=$?
echo "{EXIT_MARKER}$token $status"
$bb sync
$bb poweroff -f
"""


def command_script(command, cwd, environment) -> str:
    """A shell script that runs `command` in `cwd` with exactly `environment`.

    Every word is shell-quoted, so quotes, spaces and `$` in the command reach it
    unchanged.
    """
    assignments = " ".join(shlex.quote(f"{key}={value}") for key, value in environment.items())
    return (
        f"cd {shlex.quote(cwd)} || exit 125\n"
        f"exec {RUN_DIR}/busybox env -i {assignments} {shlex.join(command)}\n"
    )


# Run by the VM kernel's agent in a restored guest (`sh -c RESUME sh CACHE MODULES RW`):
# the host's root, read-only under the copy and a fresh tmpfs overlay, becomes the root of every
# process (pivot_root moves the root and cwd of every process that had the old one);
# the kernel filesystems, /tmp (labkit's home with its base image) and /run move along.
# The kernel package's modules and the notebooks' directory are mounted last.
RESUME = rf"""set -e
bb={RUN_DIR}/busybox
new=/.labkit-resume
$bb mkdir -p $new/lower $new/upper $new/root
$bb cp $bb $new/busybox
bb=$new/busybox
$bb mount -t 9p -o {NINEP_OPTIONS},ro$1 {ROOT_TAG} $new/lower
$bb mount -t tmpfs -o mode=0755 upper $new/upper
$bb mkdir -p $new/upper/data $new/upper/work
# The copy in guest memory over the host's root: the same bytes (the snapshot's key), read
# without crossing 9p, by the kernel and by every process it starts.
$bb mount -t overlay -o lowerdir={HOT_DIR}:$new/lower,upperdir=$new/upper/data,workdir=$new/upper/work \
    root $new/root
for dir in dev proc sys tmp run; do
    $bb mount --move /$dir $new/root/$dir
done
cd $new/root
$bb pivot_root . .
# The old root now lies on top of the new one: detach it (what still uses its files keeps them).
{RUN_DIR}/busybox umount -l .
cd /
bb={RUN_DIR}/busybox
if [ -n "$2" ] && [ -d "$2" ]; then
    $bb mkdir -p "/lib/modules/$($bb uname -r)"
    $bb mount --bind "$2" "/lib/modules/$($bb uname -r)"
fi
if [ -n "$3" ]; then
    $bb mkdir -p "$3"
    $bb mount -t 9p -o {NINEP_OPTIONS} {RW_TAG} "$3"
fi
"""
