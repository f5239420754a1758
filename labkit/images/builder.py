"""Build an image from a Dockerfile: stages in order, one layer per RUN, COPY or ADD;
config steps change only the config; every layer-making step goes through the build
cache first, so a rebuild with nothing changed makes no new layers and runs no
containers. Only the last stage becomes the image (as `docker build` without --target).

Variables follow Docker: ARGs before the first FROM serve FROM lines; a stage sees an
ARG once it declares it; `--build-arg` overrides a default; ENV wins over an ARG of the
same name; ARGs are in RUN's environment but not in the image.

RUN runs a container, which is the runtime's job: the caller hands in `run_step`
(labkit.runtime.client.build_step.run_build_step), so images never import the runtime."""

import posixpath
import signal
from pathlib import Path

from labkit.errors import ImageError, ImageNotFound
from labkit.images.add_archive import build_budget, is_archive, unpack
from labkit.images.cache import BuildCache, step_key
from labkit.images.copy_step import (
    ROOT_OWNED,
    Ownership,
    content_key,
    is_directory_in_image,
    make_copy_layer,
    resolve_sources,
)
from labkit.images.dockerfile_words import split_words, substitute
from labkit.images.dockerignore import DockerIgnore, copy_context
from labkit.images.image_users import resolve_owner
from labkit.images.named import get_image
from labkit.images.overlay import MAX_IMAGE_LAYERS
from labkit.images.recipe import parse_recipe, recipe_error
from labkit.images.rootfs import flatten
from labkit.images.store import Image, ImageConfig, Store, validate_name


def build(recipe: str, name: str, context=".", store: Store | None = None, on_progress=None,
          run_step=None, build_args: dict | None = None) -> Image:
    """Build the Dockerfile text `recipe` as image `name`, COPY reading from `context`.

    on_progress(step_index, total, text) is called when a step starts and when it ends.
    run_step(image, command, config) -> (Result, layer digest or None) runs a RUN step;
    a recipe with RUN needs it (labkit.runtime.client.build_step.run_build_step).
    build_args: NAME -> value, as `--build-arg NAME=value`.
    """
    store = store or Store()
    validate_name(name)
    dockerfile = parse_recipe(recipe)
    runs = [step for stage in dockerfile.stages for step in stage.steps if step.keyword == "RUN"]
    if runs and run_step is None:
        raise recipe_error(runs[0].line, "RUN needs a container runner: pass "
                                         "run_step=labkit.runtime.client.build_step.run_build_step to build()")
    with store.lock(), store.scratch() as scratch:
        session = _Build(store, dockerfile, dict(build_args or {}), Path(context), scratch, run_step,
                         on_progress or (lambda index, total, text: None))
        final = session.run()
        return store.save_image(name, final.layers, final.config, final.history, final.sources)


class _Build:
    """One build: the stages made so far, the build context, the progress count."""

    def __init__(self, store, dockerfile, build_args, context, scratch, run_step, progress):
        self.store, self.dockerfile, self.build_args = store, dockerfile, build_args
        self.context, self.scratch, self.run_step, self.progress = context, scratch, run_step, progress
        self.cache = BuildCache(store)
        self.stages = {}          # index and name -> _StageState
        self.roots = {}           # stage index or image name -> flattened root, for COPY --from
        self.used_args = set()
        self.counter = 0
        self.total = sum(1 + len(stage.steps) for stage in dockerfile.stages)
        self._context_copy = None
        self.unpack_budget = build_budget()   # every ADD of an archive, together

    def run(self):
        global_args = {}
        for step in self.dockerfile.global_args:
            for arg, default in step.value:
                self.used_args.add(arg)
                value = self.build_args.get(arg, None if default is None else self._sub(step, default, global_args))
                if value is not None:
                    global_args[arg] = value
        self.global_args = global_args
        state = None
        for stage in self.dockerfile.stages:
            state = self._stage(stage)
            self.stages[stage.index] = state
            if stage.name:
                self.stages[stage.name] = state
        unused = sorted(set(self.build_args) - self.used_args)
        if unused:
            self.progress(self.counter, self.total, f"warning: build-arg(s) {', '.join(unused)} were not used "
                                                    "by any ARG (as Docker, they are ignored)")
        return state

    def _sub(self, step, text, variables):
        try:
            return substitute(text, variables, self.dockerfile.escape)
        except ImageError as error:
            raise recipe_error(step.line, str(error)) from None

    def _stage(self, stage):
        self.progress(self.counter, self.total, f"FROM {stage.base}" + (f" AS {stage.name}" if stage.name else ""))
        base = self._sub(stage, stage.base, self.global_args)
        state = _StageState.start(self, base, stage)
        self.progress(self.counter, self.total, f" -> {len(state.layers)} layers from {base}")
        for step in stage.steps:
            self.counter += 1
            self.progress(self.counter, self.total, step.text)
            self.progress(self.counter, self.total, " -> " + state.apply(step))
        self.counter += 1
        return state

    def base_image(self, base: str, line: int) -> Image:
        try:
            return _local_image(base, self.store)
        except ImageNotFound as error:
            raise recipe_error(line, f"FROM {base}: {error}") from None

    def context_copy(self) -> Path:
        """The build context as .dockerignore lets it through, copied once per build (as
        Docker sends the daemon only that)."""
        if self._context_copy is None:
            root = self.context.resolve()
            if not root.is_dir():
                raise ImageError(f"the build context {self.context} is not a directory")
            self._context_copy = self.scratch / "context"
            self._context_copy.mkdir()
            copy_context(root, self._context_copy, DockerIgnore.read(root), leave_out=(self.store.home,))
        return self._context_copy

    def root_of(self, source: str, line: int) -> tuple:
        """(flattened root, how to name it) for COPY --from=SOURCE: a stage or an image."""
        key = source.lower()
        if key.isdigit() and int(key) in self.stages:
            key = int(key)
        if key in self.stages:
            state = self.stages[key]
            image = Image(f"stage {source}", state.layers, state.config, [], self.store)
        else:
            image = self.base_image(source, line)
        if key not in self.roots:
            root = self.scratch / f"from-{len(self.roots)}"
            root.mkdir()
            flatten(image, root, link=True)
            self.roots[key] = root
        return self.roots[key], f"--from={source}"


def _local_image(reference: str, store: Store) -> Image:
    """FROM name[:tag] from the local store; a registry path (docker.io/library/alpine)
    is looked up by its last component: labkit builds offline and pulls nothing."""
    if "@" in reference:
        raise ImageNotFound(f"labkit builds offline and pulls nothing, and keeps no image by digest; "
                            f"import the image and use its name")
    last = reference.rsplit("/", 1)[-1]
    candidates = [reference, last, last.removesuffix(":latest")] if "/" in reference else [
        reference, reference.removesuffix(":latest")]
    for candidate in dict.fromkeys(candidates):
        try:
            return get_image(candidate, store)
        except (ImageNotFound, ImageError):
            continue
    known = ", ".join(store.names()) or "none yet"
    raise ImageNotFound(f"no image named {last!r} here (images: {known}); labkit builds offline and pulls "
                        f"nothing: save it elsewhere (podman save -o image.tar {reference}) and "
                        f"labkit image import image.tar --name {last.removesuffix(':latest')}")


class _StageState:
    """The image a stage has made so far: layers (with their received blobs), config,
    history, and the variables its steps see."""

    def __init__(self, build: _Build, base: Image | None, base_name: str):
        self.build = build
        self.store = build.store
        self.base_name = base_name
        self.layers = list(base.layers) if base else []
        self.sources = [base.source(i) for i in range(len(base.layers))] if base else []
        self.config = base.config.copy() if base else ImageConfig(cmd=None)
        self.history = list(base.history) if base else []
        self.args = {}            # declared ARGs with a value
        self.cmd_from_base = True

    @classmethod
    def start(cls, build, base: str, stage):
        if base.lower() in build.stages:
            parent = build.stages[base.lower()]
            state = cls(build, None, base)
            state.layers, state.sources = list(parent.layers), list(parent.sources)
            state.config, state.history = parent.config.copy(), list(parent.history)
            return state
        if base == "scratch":
            return cls(build, None, "scratch")
        return cls(build, build.base_image(base, stage.line), base)

    # -- variables ---------------------------------------------------------------------

    @property
    def env(self) -> dict:
        return dict(item.split("=", 1) for item in self.config.env if "=" in item)

    @property
    def variables(self) -> dict:
        return {**self.args, **self.env}

    def sub(self, step, text) -> str:
        return self.build._sub(step, text, self.variables)

    def words(self, step, text) -> list:
        try:
            return split_words(text, self.variables, self.build.dockerfile.escape)
        except ImageError as error:
            raise recipe_error(step.line, str(error)) from None

    def run_env(self) -> list:
        """ENV, then the ARGs ENV does not set: what a RUN sees."""
        env = self.env
        return self.config.env + [f"{k}={v}" for k, v in self.args.items() if k not in env]

    # -- steps -------------------------------------------------------------------------

    def apply(self, step) -> str:
        if step.keyword == "RUN":
            command = self._command(step.value)
            return self._layer_step(step, "", self.run_env(), lambda: self._run(step, command))
        if step.keyword in ("COPY", "ADD"):
            groups = self._copy_sources(step)
            content = content_key([pair for pairs, _ in groups for pair in pairs]) + repr(
                [ownership for _, ownership in groups])
            return self._layer_step(step, content, self.config.env, lambda: self._copy(groups))
        CONFIGURE[step.keyword](self, step)
        self.history.append(self.store.history_entry(step.text, None))
        return "config updated"

    def _layer_step(self, step, content: str, env: list, make_layer) -> str:
        if len(self.layers) >= MAX_IMAGE_LAYERS:
            raise recipe_error(step.line, f"{step.keyword} would make layer {len(self.layers) + 1}, and overlayfs "
                                          f"stacks at most {MAX_IMAGE_LAYERS + 1} lower layers (the image's and "
                                          "a container's init layer); join RUN steps with && or COPY more at once")
        # who runs it and with which shell decide a RUN's layer too
        decided_by = env + [f"USER={self.config.user}", "SHELL=" + "\0".join(self.config.shell)]
        key = step_key(self.layers, step.text, decided_by, self.config.workdir, content)
        digest = self.build.cache.get(key)
        cached = digest is not None
        if not cached:
            digest = make_layer()
            self.build.cache.put(key, digest, step.text)
        self.layers.append(digest)
        self.sources.append(None)
        self.history.append(self.store.history_entry(step.text, digest))
        return f"layer {digest[7:19]}" + (" (cached)" if cached else "")

    def _command(self, value) -> list:
        kind, words = value
        return list(words) if kind == "exec" else list(self.config.shell) + [words]

    def _run(self, step, command) -> str:
        config = self.config.copy()
        config.env = self.run_env()
        intermediate = Image(f"build-{self.base_name}", list(self.layers), config, [], self.store)
        result, digest = self.build.run_step(intermediate, command, config)
        if result.exit_code != 0:
            output = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
            # The command failed, not the recipe's form: a build failure, not bad input.
            raise ImageError(f"recipe line {step.line}: {step.text!r} failed with exit code {result.exit_code}"
                             + (": " + " | ".join(output) if output else "")
                             + "; fix the command and build again")
        return digest

    def _lowers(self) -> list:
        return [self.store.layer_dir(digest) for digest in reversed(self.layers)]

    def _copy_sources(self, step) -> list:
        """[(pairs, Ownership)]: what to copy where, and who owns it."""
        value = step.value
        words = [self.sub(step, word) for word in value["sources"] + [value["destination"]]]
        sources, destination = words[:-1], words[-1]
        if len(sources) > 1 and not destination.endswith("/"):
            raise recipe_error(step.line, f"with several sources, {step.keyword}'s destination must be a "
                                          "directory ending in '/'")
        if is_directory_in_image(self._lowers(), destination, self.config.workdir):
            destination = destination.rstrip("/") + "/"
        ownership = self._ownership(step)
        if "from" in step.flags:
            root, shown = self.build.root_of(self.sub(step, step.flags["from"]), step.line)
        else:
            root, shown = self.build.context_copy(), f"the build context {self.build.context}"
        pairs = resolve_sources(step.line, sources, destination, root, shown, links_inside="from" in step.flags)
        if step.keyword != "ADD":
            return [(pairs, ownership)]
        groups = []
        for source, target in pairs:
            if is_archive(source):
                unpacked = self.build.scratch / f"add-{len(list(self.build.scratch.iterdir()))}"
                unpacked.mkdir()
                unpack(source, unpacked, self.build.unpack_budget, f"recipe line {step.line}: ADD {source.name}")
                kept = ownership if ownership.owner else Ownership(keep=True, mode=ownership.mode)
                groups.append(([(unpacked, destination.rstrip("/") or "/")], kept))
            else:
                groups.append(([(source, target)], ownership))
        return groups

    def _ownership(self, step) -> Ownership:
        owner = mode = None
        if "chown" in step.flags:
            owner = resolve_owner(self.sub(step, step.flags["chown"]), self._lowers(), f"line {step.line}: --chown")
        if "chmod" in step.flags:
            text = self.sub(step, step.flags["chmod"])
            try:
                mode = int(text, 8)
            except ValueError:
                raise recipe_error(step.line, f"--chmod={text}: labkit takes an octal mode such as 755") from None
            if not 0 <= mode <= 0o7777:
                raise recipe_error(step.line, f"--chmod={text} is not a file mode (0 to 7777)")
        return Ownership(owner=owner, mode=mode) if owner or mode is not None else ROOT_OWNED

    def _copy(self, groups) -> str:
        with self.store.scratch() as scratch:
            layer = scratch / "layer"
            layer.mkdir()
            for pairs, ownership in groups:
                make_copy_layer(pairs, self.config.workdir, layer, self._lowers(), ownership)
            return self.store.add_layer(layer)


# -- config instructions: each changes only the config ----------------------------------

def _env(state, step):
    variables = state.variables  # every pair sees the values from before this ENV (Docker)
    env = state.env
    for key, value in step.value:
        env[key] = state.build._sub(step, value, variables)
    state.config.env = [f"{key}={value}" for key, value in env.items()]


def _arg(state, step):
    for name, default in step.value:
        state.build.used_args.add(name)
        if name in state.build.build_args:
            state.args[name] = state.build.build_args[name]
        elif default is not None:
            state.args[name] = state.sub(step, default)
        elif name in state.build.global_args:
            state.args[name] = state.build.global_args[name]


def _label(state, step):
    for key, value in step.value:
        state.config.labels[state.sub(step, key)] = state.sub(step, value)


def _workdir(state, step):
    path = state.sub(step, step.argument)
    state.config.workdir = posixpath.normpath(posixpath.join(state.config.workdir or "/", path))


def _user(state, step):
    state.config.user = state.sub(step, step.argument)


def _expose(state, step):
    ports = []
    for word in state.words(step, " ".join(step.value)):
        number, _, protocol = word.partition("/")
        protocol = (protocol or "tcp").lower()
        low, _, high = number.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or protocol not in ("tcp", "udp", "sctp"):
            raise recipe_error(step.line, f"EXPOSE {word!r}: expected PORT[/tcp|udp|sctp] or a range PORT-PORT")
        ports.extend(f"{port}/{protocol}" for port in range(int(low), int(high or low) + 1))
    state.config.exposed_ports = sorted(set(state.config.exposed_ports) | set(ports))


def _volume(state, step):
    volumes = [state.sub(step, word) for word in step.value]
    state.config.volumes = sorted(set(state.config.volumes) | set(volumes))


def _stopsignal(state, step):
    value = state.sub(step, step.argument)
    name = value.upper()
    known = name.isdigit() or (name if name.startswith("SIG") else "SIG" + name) in signal.Signals.__members__
    if not known:
        raise recipe_error(step.line, f"STOPSIGNAL {value!r} is not a signal name or number (e.g. SIGQUIT)")
    state.config.stop_signal = value


def _shell(state, step):
    state.config.shell = list(step.value)


def _cmd(state, step):
    state.config.cmd = state._command(step.value)
    state.cmd_from_base = False


def _entrypoint(state, step):
    state.config.entrypoint = state._command(step.value)
    if state.cmd_from_base:
        state.config.cmd = None  # as Docker: an ENTRYPOINT drops the CMD the base image set


CONFIGURE = {"ENV": _env, "ARG": _arg, "LABEL": _label, "WORKDIR": _workdir, "USER": _user, "EXPOSE": _expose,
             "VOLUME": _volume, "STOPSIGNAL": _stopsignal, "SHELL": _shell, "CMD": _cmd, "ENTRYPOINT": _entrypoint}
