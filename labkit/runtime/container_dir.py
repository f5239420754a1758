"""One container's directory on disk, the only module that knows its layout:

    LABKIT_HOME/containers/<id>/
        state.json              what the runtime records: name, image, image_layers, status, owner
        layer/upper/ layer/work/  the overlay's read-write layer (what commit keeps) and its work dir;
                                `layer` is a tmpfs of the size asked for when the layer is bounded
        rootfs/                 where the overlay is mounted, inside the container's mount namespace
        hostname hosts resolv.conf  the container's own /etc files, bind-mounted over the init
                                layer's placeholders (as moby's containers/<id>/hosts): an edit inside
                                lands here, never in the read-write layer; hosts is rewritten in
                                place for bridge peers (the bind mount pins its inode)
        init/etc/               the init layer: empty placeholders of those three files, the
                                overlay's top lower layer (moby's <id>-init), never written while
                                mounted and never committed
        stdout.log  stderr.log  a detached container's output (rotated: stdout.log.1, ... older)
        inspect.json monitor.sock  a `labkit run -d` container's record and its monitor's socket

The helper makes it all (a detached container's logs too, which it writes), writes
state.json and removes it; the client reads state.json and the logs. Shared: one layout for
both sides, and for plan.py's paths.
"""

import json
import os
import stat
from pathlib import Path

from labkit.errors import HostError
from labkit.files import write_atomically
from labkit.home import labkit_home, private_dir
from labkit.linux.rootless import remove_tree
from labkit.units import format_bytes

STATE_FILE = "state.json"
LOG_NAMES = ("stdout", "stderr")


def mount_layer_tmpfs(directory: Path, size: int) -> None:
    """A tmpfs of `size` bytes to hold upper/ and work/ (overlay wants both on one
    filesystem). Why tmpfs: the host's own filesystem cannot bound one directory (Docker's
    overlay2 `size=` needs xfs project quotas, which an ext4 host lacks), a loop-mounted
    image costs a file, a mkfs and a loop device per container; a tmpfs costs one mount.
    Its pages are memory, charged to the container that writes them (its --memory
    counts them too), and they are freed when the container is removed."""
    from labkit.linux import syscalls  # ctypes: not for a client that never mounts

    try:
        syscalls.mount("labkit-layer", str(directory), "tmpfs", 0, f"size={size},mode=0755")
    except OSError as error:
        raise HostError(f"--storage-opt size {format_bytes(size)}: cannot bound the read-write layer on this host "
                        f"(a tmpfs of that size could not be mounted: {os.strerror(error.errno)}); "
                        "run without a size (and without a [storage] default in the class defaults)") from None


def _remove_entry(entry) -> None:
    if entry.is_dir(follow_symlinks=False):
        remove_tree(entry.path)
    else:
        os.unlink(entry.path)


def _plain_dir(path: Path) -> bool:
    """A real directory of ours (not chowned for a --userns container's ids)."""
    info = os.lstat(path)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def _empty_placeholder(path: Path) -> bool:
    info = os.lstat(path)
    return stat.S_ISREG(info.st_mode) and info.st_size == 0 and info.st_uid == os.geteuid() and info.st_nlink == 1


def containers_root(home: Path | None = None) -> Path:
    return (home or labkit_home()) / "containers"


def slots_root(home: Path | None = None) -> Path:
    """LABKIT_HOME/slots/<slot's cgroup leaf>/: a ready slot's container directory, made
    ahead with its root (runtime/helper/ready_slots.py), laid out as a container's but with
    no state.json: its name says its helper (the sweep's test), and its image's layers may
    be removed under it (a start checks them before it takes the root). Renamed to
    containers/<id> when a container takes the slot; `ps` never lists it."""
    return (home or labkit_home()) / "slots"


class ContainerDir:
    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def of(cls, container_id: str, home: Path | None = None) -> "ContainerDir":
        return cls(containers_root(home) / container_id)

    # --- paths -------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The LABKIT_HOME this directory is in."""
        return self.path.parent.parent

    @property
    def layer(self) -> Path:
        return self.path / "layer"

    @property
    def upper(self) -> Path:
        return self.layer / "upper"

    @property
    def work(self) -> Path:
        return self.layer / "work"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def init(self) -> Path:
        return self.path / "init"

    @property
    def hosts_file(self) -> Path:
        return self.etc_file("hosts")

    def etc_file(self, name: str) -> Path:
        """The container's own /etc/<name> (hostname, hosts, resolv.conf), bind-mounted inside."""
        return self.path / name

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def record_file(self) -> Path:
        """inspect.json: a detached container's Docker-like record, its monitor's
        (runtime/client/monitor.py)."""
        return self.path / "inspect.json"

    @property
    def monitor_socket(self) -> Path:
        """Where a detached container's monitor answers the other `labkit` verbs."""
        return self.path / "monitor.sock"

    def log(self, name: str) -> Path:
        """stdout.log or stderr.log (the newest part, when rotated)."""
        return self.path / f"{name}.log"

    def logs(self, name: str) -> list:
        """Every part of stdout or stderr still kept, oldest first: stdout.log.N … stdout.log."""
        current = self.log(name)
        rotated = []
        number = 1
        while current.with_name(f"{current.name}.{number}").exists():
            rotated.append(current.with_name(f"{current.name}.{number}"))
            number += 1
        return [*reversed(rotated), *([current] if current.exists() else [])]

    # --- making and removing -------------------------------------------------------------

    def make(self, init_files: dict, owner_uid: int | None = None, storage_size: int | None = None) -> None:
        """upper, work, rootfs, the container's /etc files and the init layer's empty
        placeholders for them (the helper, at start).
        `owner_uid`: with a user namespace, the host uid of the container's root, which
        must own what it writes to. `storage_size`: bytes the read-write layer may hold."""
        private_dir(self.path.parent)
        os.makedirs(self.path, exist_ok=True)
        os.mkdir(self.layer)
        if storage_size is not None:
            mount_layer_tmpfs(self.layer, storage_size)
        for path in (self.upper, self.work, self.rootfs):
            os.mkdir(path)
        init_etc = self.init / "etc"
        os.makedirs(init_etc)
        for name, text in init_files.items():
            open(init_etc / name, "w").close()      # the mount point: stays empty
            with open(self.etc_file(name), "w") as handle:
                handle.write(text)
        if owner_uid is not None:
            for path in (self.upper, self.work, self.rootfs, *map(self.etc_file, init_files)):
                os.chown(path, owner_uid, owner_uid)

    # --- spares: the skeleton of a removed container's directory, made a slot's again ----
    # On an ext4 without a journal (these machines) each inode created skips every inode of
    # its group freed in the last 60-360 s (fs/ext4/ialloc.c `recently_deleted`): after a
    # stream of containers a perf profile put a quarter of the CPU there. A container's
    # directory is 17 inodes; the 8 nothing inside the container can reach (this directory,
    # layer/, rootfs/, init/etc/ and its empty placeholders: the overlay never writes a lower
    # layer) are kept for the next slot instead of freed and made again.

    SKELETON = ("layer", "rootfs", "init")

    def make_spare(self, spare: Path, init_names) -> bool:
        """Strip this (exited, unmounted) directory to its skeleton and rename it to
        `spare`; False, nothing kept, where it is not exactly the skeleton labkit made
        (a bounded layer's tmpfs, a --userns container's ids, anything unexpected)."""
        try:
            if os.path.ismount(self.layer) or os.path.ismount(self.rootfs):
                return False
            for entry in os.scandir(self.path):
                if entry.name not in self.SKELETON:
                    _remove_entry(entry)
            for entry in os.scandir(self.layer):
                _remove_entry(entry)
            if not (all(map(_plain_dir, (self.path, self.layer, self.rootfs, self.init, self.init / "etc")))
                    and not os.listdir(self.rootfs) and os.listdir(self.init) == ["etc"]
                    and sorted(os.listdir(self.init / "etc")) == sorted(init_names)
                    and all(_empty_placeholder(self.init / "etc" / name) for name in init_names)):
                return False
            os.rename(self.path, spare)
            return True
        except OSError:
            return False

    def make_from_spare(self, spares: list, init_files: dict) -> bool:
        """make() from one of `spares` (paths, first free first) when one can be had: the
        skeleton renamed here, upper/, work/ and the /etc files made new. False: none."""
        for spare in spares:
            try:
                os.rename(spare, self.path)
            except OSError:
                continue   # another slot took it, or it is gone
            try:
                for path in (self.upper, self.work):
                    os.mkdir(path)
                for name, text in init_files.items():
                    with open(self.etc_file(name), "x") as handle:
                        handle.write(text)
            except OSError:
                self.remove()
                raise
            return True
        return False

    def take_over(self, slot_dir: "ContainerDir", init_files: dict) -> None:
        """Become the directory a ready slot made ahead (rename), with this container's
        /etc files written in place: the slot's root has them bind-mounted already, and a
        bind mount pins the inode (a new file renamed over would not be seen)."""
        private_dir(self.path.parent)
        os.rename(slot_dir.path, self.path)
        # Made now, as far as a sweep in another process can tell: until its state.json is
        # written, a directory is taken for one still being made only while it is young
        # (runtime/client/state.py `sweep`), and a slot's may have waited for minutes.
        os.utime(self.path)
        for name, text in init_files.items():
            # raw calls: a text file object costs more than the write (on the start's path)
            descriptor = os.open(self.etc_file(name), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                os.write(descriptor, text.encode())
            finally:
                os.close(descriptor)

    def remove(self) -> None:
        if os.path.ismount(self.layer):
            from labkit.linux import syscalls

            syscalls.umount2(str(self.layer), syscalls.MNT_DETACH)
        # Rootless, its files may belong to other ids of the user's range: removed from
        # inside the user namespace where the user alone may not (labkit.linux.rootless).
        remove_tree(self.path)

    # --- state.json ------------------------------------------------------------------------

    def write_state(self, state: dict) -> None:
        write_atomically(self.state_file, json.dumps(state, indent=1), mode=0o600)  # container data: not for other users

    def forget_state(self) -> None:
        """The container is gone as far as anyone asking is concerned (`ps`, which layers
        are in use), though its directory is still being removed."""
        try:
            os.unlink(self.state_file)
        except FileNotFoundError:
            pass

    def read_state(self) -> dict | None:
        try:
            with open(self.state_file) as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None
