"""Build an image from a recipe: one layer per RUN or COPY, config steps change only
the config, and every layer-making step goes through the build cache first, so a
rebuild with nothing changed makes no new layers and runs no containers.

RUN runs a container, which is the runtime's job: the caller hands in `run_step`
(labkit.runtime.build_step.run_build_step), so images never import the runtime."""

import posixpath
from dataclasses import replace
from pathlib import Path

from labkit.errors import ImageNotFound
from labkit.images.cache import BuildCache, step_key
from labkit.images.copy_step import content_key, make_copy_layer, resolve_sources
from labkit.images.named import get_image
from labkit.images.recipe import parse_recipe, recipe_error
from labkit.images.store import Image, ImageConfig, Store, validate_name


def build(recipe: str, name: str, context=".", store: Store | None = None, on_progress=None,
          run_step=None) -> Image:
    """Build the recipe text `recipe` as image `name`, COPY reading from `context`.

    on_progress(step_index, total, text) is called when a step starts and when it ends.
    run_step(image, command, config) -> (Result, layer digest or None) runs a RUN step;
    a recipe with RUN needs it (labkit.runtime.build_step.run_build_step).
    """
    store = store or Store()
    validate_name(name)
    steps = parse_recipe(recipe)
    needs_runner = next((step for step in steps if step.keyword == "RUN"), None)
    if needs_runner is not None and run_step is None:
        raise recipe_error(needs_runner.line, "RUN needs a container runner: pass "
                                              "run_step=labkit.runtime.build_step.run_build_step to build()")
    progress = on_progress or (lambda index, total, text: None)
    with store.lock():
        state = _BuildState.start(steps[0], store, run_step)
        total = len(steps)
        progress(0, total, f"{steps[0].text}")
        progress(0, total, f" -> {len(state.layers)} layers from {state.base_name}")
        for index, step in enumerate(steps[1:], 1):
            progress(index, total, step.text)
            progress(index, total, " -> " + state.apply(step, Path(context), name))
        return store.save_image(name, state.layers, state.config, state.history)


class _BuildState:
    """The image so far: layers, config and history after each step."""

    def __init__(self, store, base: Image | None, base_name: str, run_step):
        self.store = store
        self.run_step = run_step
        self.cache = BuildCache(store)
        self.base_name = base_name
        self.layers = list(base.layers) if base else []
        self.config = replace(base.config, env=list(base.config.env), cmd=list(base.config.cmd),
                              labels=dict(base.config.labels)) if base else ImageConfig()
        self.history = list(base.history) if base else []

    @classmethod
    def start(cls, step, store, run_step):
        if step.value == "scratch":
            return cls(store, None, "scratch", run_step)
        try:
            return cls(store, get_image(step.value, store), step.value, run_step)
        except ImageNotFound as error:
            raise recipe_error(step.line, f"FROM {step.value}: {error}") from None

    def apply(self, step, context: Path, name: str) -> str:
        if step.keyword == "RUN":
            return self._layer_step(step, "", lambda: self._run(step, name))
        if step.keyword == "COPY":
            sources = resolve_sources(step, context)
            return self._layer_step(step, content_key(sources), lambda: self._copy(sources))
        self._configure(step)
        self.history.append(self.store.history_entry(step.text, None))
        return "config updated"

    def _layer_step(self, step, content: str, make_layer) -> str:
        key = step_key(self.layers, step.text, self.config.env, self.config.workdir, content)
        digest = self.cache.get(key)
        cached = digest is not None
        if not cached:
            digest = make_layer()
            self.cache.put(key, digest, step.text)
        self.layers.append(digest)
        self.history.append(self.store.history_entry(step.text, digest))
        return f"layer {digest[7:19]}" + (" (cached)" if cached else "")

    def _configure(self, step) -> None:
        if step.keyword == "ENV":
            env = dict(item.split("=", 1) for item in self.config.env)
            env.update(step.value)
            self.config.env = [f"{key}={value}" for key, value in env.items()]
        elif step.keyword == "WORKDIR":
            self.config.workdir = posixpath.normpath(posixpath.join(self.config.workdir or "/", step.value))
        elif step.keyword == "CMD":
            self.config.cmd = list(step.value)
        elif step.keyword == "LABEL":
            self.config.labels.update(step.value)

    def _copy(self, sources) -> str:
        with self.store.scratch() as scratch:
            layer = scratch / "layer"
            layer.mkdir()
            lowers = [self.store.layer_dir(digest) for digest in reversed(self.layers)]
            make_copy_layer(sources, self.config.workdir, layer, lowers)
            return self.store.add_layer(layer)

    def _run(self, step, name) -> str:
        intermediate = Image(f"{name}-build", list(self.layers), self.config, list(self.history), self.store)
        result, digest = self.run_step(intermediate, step.value, self.config)
        if result.exit_code != 0:
            output = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
            raise recipe_error(step.line, f"{step.text!r} failed with exit code {result.exit_code}"
                                          + (": " + " | ".join(output) if output else "")
                                          + "; fix the command and build again")
        return digest

