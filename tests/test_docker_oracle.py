"""labkit against podman as the oracle: the same Dockerfiles built by both give the same
file trees and the same config, the images of each run in the other with the same user,
entrypoint and output, and an image goes podman -> labkit -> podman unchanged.

podman (Debian's, `make setup` installs it) runs with runc (crun refuses this host's hybrid
cgroups), its storage in a temp dir (vfs: no mounts to leak), no network: the base image
is labkit's busybox rootfs, imported into podman with `podman import`, then saved and
imported into labkit, so both start from the same layer. Where the two differ by design,
the difference is listed below with its reason; anything else fails.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest
from leak_checks import labkit_mounts

from labkit.images import export_image, get_image, import_image
from labkit.images.builder import build
from labkit.images.rootfs import flatten
from labkit.images.store import Store

pytestmark = [pytest.mark.root, pytest.mark.slow]

MISSING = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
needs_podman = pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} (apt-get install "
                                                        f"podman runc; make setup installs them)")
BASE = "localhost/base"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What buildah's RUN leaves that labkit's does not: the files it bind-mounts over while a
# RUN runs stay in the layer as empty mount points (labkit's are in the init layer, which
# is never committed, as Docker's are bind mounts).
BUILDAH_MOUNT_POINTS = {"etc/hostname", "etc/hosts", "etc/resolv.conf", "run", "run/.containerenv"}
# buildah's own label on every image it builds
BUILDAH_LABELS = {"io.buildah.version"}


class Podman:
    """podman with its storage under `top`, runc, no network, no events journal."""

    def __init__(self, top: Path):
        self.top = top
        self.base_args = ["podman", "--root", str(top / "root"), "--runroot", str(top / "run"),
                          "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                          "--events-backend", "none", "--tmpdir", str(top / "tmp")]
        (top / "tmp").mkdir(parents=True, exist_ok=True)

    def __call__(self, *args, check=True):
        done = subprocess.run(self.base_args + [str(a) for a in args], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, TMPDIR=str(self.top / "tmp")))
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr}")
        return done

    def run(self, image, *command, entrypoint=None):
        extra = ["--entrypoint", entrypoint] if entrypoint is not None else []
        return self("run", "--rm", "--network", "none", "--ulimit", "nofile=4096:4096", "--ulimit",
                    "nproc=4096:4096", *extra, image, *command, check=False)

    def inspect(self, image) -> dict:
        return json.loads(self("image", "inspect", image).stdout)[0]

    def tree(self, image) -> dict:
        mounted = Path(self("image", "mount", image).stdout.strip())
        try:
            return file_tree(mounted)
        finally:
            self("image", "unmount", image)

    def cleanup(self):
        for line in open("/proc/self/mounts").read().splitlines():
            target = line.split()[1]
            if target.startswith(str(self.top)):
                subprocess.run(["umount", "-l", target], check=False)
        for pid in _processes_mentioning(str(self.top)):
            try:
                os.kill(pid, 9)  # a conmon or a container process this test's podman left
            except ProcessLookupError:
                pass
        shutil.rmtree(self.top, ignore_errors=True)


def _processes_mentioning(text: str) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry))
    return found


def file_tree(root: Path) -> dict:
    """path -> (kind, mode, uid, gid, content hash or link target), the root itself left out."""
    tree = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            relative = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    what = ("file", hashlib.sha256(handle.read()).hexdigest()[:16])
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", "")
            else:
                what = ("special", f"{st.st_mode:o}")
            tree[relative] = (what[0], oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, what[1])
    return tree


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(podman, labkit store) sharing one base image, and nothing of either left after."""
    top = tmp_path_factory.mktemp("oracle")
    os.chmod(top, 0o755)
    podman = Podman(top / "podman")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LABKIT_HOME", str(top / "labkit"))
        store = Store()
        try:
            export_image(get_image("busybox", store), top / "base.tar", "rootfs")
            podman("import", "--change", f"ENV {PATH}", "--change", 'CMD ["sh"]', top / "base.tar", BASE)
            podman("save", "--format", "oci-archive", "-o", top / "base-oci.tar", BASE)
            import_image(top / "base-oci.tar", name="base", store=store)
            yield podman, store, top
        finally:
            from labkit.runtime.client.helper_client import settle

            settle()
            podman.cleanup()
    assert _processes_mentioning(str(top / "podman")) == [], "podman processes left behind"
    assert labkit_mounts(top) == [], "mounts left behind"


# --- the corpus ---------------------------------------------------------------------------

USERS = ('RUN echo "app:x:1000:1000:app:/home/app:/bin/sh" >> /etc/passwd && '
         'echo "app:x:1000:" >> /etc/group && mkdir -p /home/app && chown app:app /home/app')


def _tarball(files: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, (content, uid) in files.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                data = None
            else:
                data = content.encode()
                info.size, info.mode = len(data), 0o640
            info.uid = info.gid = uid
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


CORPUS = {
    "env-workdir": dict(dockerfile="""
        FROM localhost/base
        ENV APP_HOME=/srv/app
        WORKDIR $APP_HOME
        RUN echo hi > greeting
        CMD ["cat", "greeting"]
        """),
    "arg-and-build-arg": dict(dockerfile="""
        FROM localhost/base
        ARG VERSION=1.0
        ARG NAME
        ARG UNSET
        ENV VERSION=$VERSION
        RUN echo "$VERSION $NAME [$UNSET]" > /version
        CMD ["cat", "/version"]
        """, build_args={"NAME": "lab"}),
    "global-arg-in-from": dict(dockerfile="""
        ARG BASE=localhost/base
        ARG GREETING=hello
        FROM $BASE
        ARG GREETING
        RUN echo "$GREETING from $BASE" > /from.txt
        CMD ["cat", "/from.txt"]
        """),
    "substitution-rules": dict(dockerfile="""
        FROM localhost/base
        ARG EMPTY=
        ARG SET=yes
        ENV A=${UNSET:-fallback} B=${SET:+alternative} C=\\$literal D="${SET}-quoted" E='${SET}-single'
        ENV F=${EMPTY:-empty-default} H=$A
        WORKDIR /data/${SET}
        LABEL greeting="${A} and ${B}"
        RUN echo "$A|$B|$C|$D|$E|$F|$H" > vars
        CMD ["cat", "vars"]
        """),
    "user-by-name": dict(dockerfile=f"""
        FROM localhost/base
        {USERS}
        USER app
        WORKDIR /home/app
        RUN touch made-by-app && id > id.txt
        CMD ["cat", "id.txt"]
        """),
    "user-numeric": dict(dockerfile="""
        FROM localhost/base
        USER 1234:4321
        RUN id -u > /tmp/uid
        CMD ["sh", "-c", "id -u; id -g; id -G"]
        """),
    "workdir-without-run": dict(dockerfile="""
        FROM localhost/base
        WORKDIR /made/by/workdir
        COPY file.txt .
        WORKDIR /empty/workdir
        CMD ["pwd"]
        """, files={"file.txt": "f\n"}),
    "entrypoint-and-cmd": dict(dockerfile="""
        FROM localhost/base
        ENTRYPOINT ["echo", "entry"]
        CMD ["default", "args"]
        """),
    "entrypoint-shell-form": dict(dockerfile="""
        FROM localhost/base
        ENV WHO=shell
        ENTRYPOINT echo entry from $WHO
        CMD ["ignored"]
        """),
    "cmd-shell-form-and-shell": dict(dockerfile="""
        FROM localhost/base
        SHELL ["/bin/sh", "-ec"]
        RUN echo "$0" > /which-shell
        ENV WHO=world
        CMD echo hello $WHO
        """),
    "copy-chown-chmod": dict(dockerfile=f"""
        FROM localhost/base
        {USERS}
        COPY --chown=app:app files/ /data/
        COPY --chown=1000 files/one.txt /data/numeric.txt
        COPY --chmod=750 run.sh /usr/local/bin/run.sh
        CMD ["/usr/local/bin/run.sh"]
        """, files={"files/one.txt": "one\n", "files/sub/two.txt": "two\n",
                    "run.sh": ("#!/bin/sh\nstat -c '%n %u:%g %a' /data/* /data/sub/*\n", 0o644)}),
    "dockerignore": dict(dockerfile="""
        FROM localhost/base
        COPY . /app/
        CMD ["find", "/app"]
        """, files={".dockerignore": "secrets\n*.log\n!keep.log\n**/tmp\n/docs\nsrc/*.bak\n# comment\n",
                    "secrets/key": "hunter2\n", "debug.log": "x\n", "keep.log": "kept\n",
                    "src/main.txt": "main\n", "src/tmp/scratch": "s\n", "src/old.bak": "b\n",
                    "docs/readme": "d\n", "src/docs/inner": "i\n", "deep/a/tmp/x": "x\n"}),
    "multi-stage": dict(dockerfile="""
        FROM localhost/base AS build
        WORKDIR /src
        RUN mkdir -p /out && echo built > /out/artifact && echo junk > /src/junk
        FROM localhost/base
        COPY --from=build /out/artifact /usr/local/share/artifact
        CMD ["cat", "/usr/local/share/artifact"]
        """),
    "stages-by-index-and-as-base": dict(dockerfile="""
        FROM localhost/base AS one
        RUN echo 1 > /one
        FROM one AS two
        RUN echo 2 > /two
        FROM localhost/base
        COPY --from=0 /one /
        COPY --from=two /two /one-and-two/
        CMD ["sh", "-c", "cat /one /one-and-two/two"]
        """),
    "add-local-archive": dict(dockerfile="""
        FROM localhost/base
        ADD bundle.tar.gz /opt/
        ADD plain.txt /opt/plain.txt
        CMD ["sh", "-c", "stat -c '%n %u:%g %a' /opt/* /opt/bundle/*; cat /opt/bundle/hello"]
        """, files={"bundle.tar.gz": _tarball({"bundle": (None, 1000), "bundle/hello": ("hello\n", 1000)}),
                    "plain.txt": "plain\n"}),
    "labels-expose-stopsignal": dict(dockerfile="""
        FROM localhost/base
        LABEL org.example.name="lab kit" version=1
        LABEL "with space"="a value"
        EXPOSE 80 53/udp 8000-8001
        STOPSIGNAL SIGQUIT
        CMD ["true"]
        """),
    "deletions": dict(dockerfile="""
        FROM localhost/base
        RUN mkdir -p /a/b && touch /a/b/c /a/keep
        RUN rm -rf /a/b /bin/vi /usr/sbin
        RUN mkdir /a/b && echo again > /a/b/new
        CMD ["find", "/a"]
        """),
    "workdir-relative-and-env-legacy": dict(dockerfile="""
        FROM localhost/base
        WORKDIR /a
        WORKDIR b
        ENV MESSAGE hello big world
        ENV Q="a \\"quoted\\" value" R='single $MESSAGE'
        WORKDIR c
        RUN pwd > /pwd.txt && echo "$MESSAGE|$Q|$R" >> /pwd.txt
        CMD ["cat", "/pwd.txt"]
        """),
}

# Where labkit follows Docker and podman (buildah 1.28, Debian 12) does not:
# (case, config key) -> (labkit's value, podman's value, why)
KNOWN_DIFFERENCES = {
    ("cmd-shell-form-and-shell", "Cmd"): (
        ["/bin/sh", "-ec", "echo hello $WHO"], ["/bin/sh", "-c", "echo hello $WHO"],
        "Docker runs the shell form of CMD and ENTRYPOINT with the shell SHELL set; buildah uses /bin/sh -c"),
    ("labels-expose-stopsignal", "ExposedPorts"): (
        ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"], ["53/udp", "80/tcp", "8000-8001/tcp"],
        "Docker expands a port range into one entry per port (nat.ParsePortSpecs); buildah keeps the range"),
}


def _write_context(directory: Path, case: dict) -> None:
    directory.mkdir()
    (directory / "Dockerfile").write_text(textwrap.dedent(case["dockerfile"]).lstrip())
    for name, content in case.get("files", {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o644
        if isinstance(content, tuple):
            content, mode = content
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        os.chmod(path, mode)


def _labkit_config(image) -> dict:
    config = image.config
    return {"User": config.user, "Entrypoint": config.entrypoint, "Cmd": config.cmd, "Env": config.env,
            "WorkingDir": config.workdir, "ExposedPorts": sorted(config.exposed_ports),
            "Labels": config.labels, "StopSignal": config.stop_signal}


def _podman_config(inspected: dict) -> dict:
    config = inspected.get("Config") or {}
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if k not in BUILDAH_LABELS}
    return {"User": config.get("User", ""), "Entrypoint": config.get("Entrypoint"), "Cmd": config.get("Cmd"),
            "Env": config.get("Env"), "WorkingDir": config.get("WorkingDir") or "/",
            "ExposedPorts": sorted(config.get("ExposedPorts") or {}), "Labels": labels,
            "StopSignal": config.get("StopSignal", "")}


def _without_mount_points(podman_tree: dict, labkit_tree: dict) -> dict:
    """podman's tree less the mount points its RUN left (empty files, empty /run), which
    labkit's image does not have."""
    return {path: entry for path, entry in podman_tree.items()
            if not (path in BUILDAH_MOUNT_POINTS and path not in labkit_tree
                    and entry[4] in ("", hashlib.sha256(b"").hexdigest()[:16]))}


def _labkit_run(image: str, command=(), entrypoint=None):
    from labkit.runtime import Container, ContainerSpec

    return Container(ContainerSpec(image=image, command=list(command), entrypoint=entrypoint)).run()


@needs_podman
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_labkit_builds_what_podman_builds(oracle, name, tmp_path):
    podman, store, top = oracle
    case = CORPUS[name]
    context = tmp_path / "context"
    _write_context(context, case)
    build_args = case.get("build_args", {})

    from labkit.runtime.client.build_step import run_build_step

    ours = build((context / "Dockerfile").read_text(), name, context, store=store, run_step=run_build_step,
                 build_args=build_args)
    podman("build", "--format", "docker", "--network", "none", "--pull=never", "-t", f"localhost/{name}",
           *[f"--build-arg={k}={v}" for k, v in build_args.items()], context)
    theirs = podman.inspect(f"localhost/{name}")

    ours_config, their_config = _labkit_config(ours), _podman_config(theirs)
    for (case_name, key), (labkit_value, podman_value, _why) in KNOWN_DIFFERENCES.items():
        if case_name == name:
            assert (ours_config.pop(key), their_config.pop(key)) == (labkit_value, podman_value)
    assert ours_config == their_config

    ours_root = tmp_path / "ours"
    ours_root.mkdir()
    flatten(ours, ours_root, link=False)  # copies: a hard link would show in `stat` of a run below
    our_tree = file_tree(ours_root)
    their_tree = _without_mount_points(podman.tree(f"localhost/{name}"), our_tree)
    only_ours = {p: e for p, e in our_tree.items() if their_tree.get(p) != e}
    only_theirs = {p: e for p, e in their_tree.items() if our_tree.get(p) != e}
    assert (only_ours, only_theirs) == ({}, {})

    # each image runs in the other, with the same user, entrypoint and output
    export_image(ours, tmp_path / "ours-oci.tar", "oci")
    loaded = podman("load", "-i", tmp_path / "ours-oci.tar").stdout.strip().rsplit(" ", 1)[-1]
    podman("save", "--format", "oci-archive", "-o", tmp_path / "theirs-oci.tar", f"localhost/{name}")
    import_image(tmp_path / "theirs-oci.tar", name=f"from-podman-{name}", store=store)

    probe = ["-c", "id -u; id -g; id -G; pwd; echo $HOME"]
    for label, in_podman, in_labkit in (("podman's", f"localhost/{name}", f"from-podman-{name}"),
                                        ("labkit's", loaded, name)):
        podman_default, labkit_default = podman.run(in_podman), _labkit_run(in_labkit)
        assert (labkit_default.exit_code, labkit_default.stdout) == (podman_default.returncode,
                                                                     podman_default.stdout), label
        podman_probe, labkit_probe = podman.run(in_podman, *probe, entrypoint="sh"), _labkit_run(
            in_labkit, probe, entrypoint="sh")
        assert labkit_probe.stdout == podman_probe.stdout, label
    assert podman.inspect(loaded)["RootFS"]["Layers"][0] == theirs["RootFS"]["Layers"][0]


@needs_podman
@pytest.mark.parametrize("archive_format", ["oci-archive", "docker-archive"])
def test_podman_to_labkit_to_podman_keeps_every_digest_and_the_image_id(oracle, tmp_path, archive_format):
    """The image's format matches the archive's: podman itself converts the config (and so
    changes the ID) when it saves a Docker-format image as OCI."""
    podman, store, top = oracle
    context = tmp_path / "context"
    _write_context(context, dict(dockerfile="""
        FROM localhost/base
        RUN echo made > /made
        USER nobody
        WORKDIR /tmp
        ENTRYPOINT ["sh", "-c", "echo $(id -un) in $(pwd): \\"$@\\"", "entry"]
        CMD ["default"]
        EXPOSE 8080
        STOPSIGNAL SIGINT
        """))
    image = f"localhost/roundtrip-{archive_format}"
    podman("build", "--format", "oci" if archive_format == "oci-archive" else "docker", "--network", "none",
           "--pull=never", "-t", image, context)
    before = podman.inspect(image)
    podman("save", "--format", archive_format, "-o", tmp_path / "from-podman.tar", image)

    ours = import_image(tmp_path / "from-podman.tar", name="roundtrip", store=store)
    assert ours.config.user == "nobody" and ours.config.entrypoint[0] == "sh" and ours.config.cmd == ["default"]
    assert _labkit_run("roundtrip").stdout == "nobody in /tmp: default\n"
    assert _labkit_run("roundtrip", ["-c", "id -u"], entrypoint="sh").stdout == "65534\n"

    podman("rmi", image)
    export_format = "oci" if archive_format == "oci-archive" else "docker"
    export_image(ours, tmp_path / "back.tar", export_format)
    loaded = podman("load", "-i", tmp_path / "back.tar").stdout.strip().rsplit(" ", 1)[-1]
    after = podman.inspect(loaded)
    assert after["Id"] == before["Id"]
    assert after["RootFS"]["Layers"] == before["RootFS"]["Layers"]
    assert after["Config"]["User"] == "nobody"
    assert podman.run(loaded).stdout == "nobody in /tmp: default\n"
