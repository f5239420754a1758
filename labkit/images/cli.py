"""`labkit image …`, `labkit build` and `labkit commit`: thin over labkit.images.

Also runnable alone: python -m labkit.images.cli image ls
"""

import json
import sys
from pathlib import Path

from labkit.errors import BadImageInput
from labkit.verbs import Verb, add_verbs, dispatch, option, parser_for


def _store():
    from labkit.images.store import Store

    return Store()


def _image(name):
    from labkit.images import get_image

    return get_image(name, _store())


def cmd_ls(options):
    from labkit.images.report import image_rows, table

    print(table(image_rows(_store())))


def cmd_inspect(options):
    print(json.dumps(_image(options.image).to_dict(), indent=2))


def cmd_history(options):
    from labkit.images.report import history_rows, table

    print(table(history_rows(_image(options.image))))


def cmd_layers(options):
    from labkit.images.report import layer_rows, table

    print(table(layer_rows(_image(options.image))))


def cmd_diff(options):
    from labkit.images.containers import changes
    from labkit.runtime.client.state import find_container

    print("\n".join(changes(options.image, options.layer, _store(), find_container=find_container).lines()))


def cmd_rm(options):
    from labkit.runtime.client.state import layers_in_use

    store = _store()
    for name in options.images:
        removed = store.remove_image(name, layers_used_by_containers=layers_in_use)
        print(f"removed image {name} and {len(removed)} layers no one else uses")


def cmd_prune(options):
    from labkit.runtime.client.state import layers_in_use

    removed = _store().prune(layers_used_by_containers=layers_in_use)
    print(f"removed {len(removed)} unused layers")


def cmd_import(options):
    from labkit.images.transfer import import_image

    image = import_image(options.path, name=options.name, store=_store(), ref=options.ref,
                         allow_devices=options.allow_devices, keep_setuid=options.keep_setuid)
    print(f"imported {image.name}: {len(image.layers)} layers")


def cmd_export(options):
    from labkit.images.transfer import export_image

    path = export_image(options.image, options.path, format=options.format, compression=options.compression,
                        store=_store())
    print(f"exported {options.image} to {path} ({options.format})")


def cmd_build(options):
    from labkit.images.builder import build
    from labkit.runtime.client.build_step import run_build_step

    recipe_path = Path(options.file) if options.file else Path(options.context) / "Dockerfile"
    try:
        recipe = recipe_path.read_text()
    except OSError as error:
        raise BadImageInput(f"cannot read the recipe {recipe_path}: {error.strerror}; give one with -f") from None

    def progress(index, total, text):
        print(f"Step {index + 1}/{total} : {text.strip()}" if not text.startswith(" ->") else f"  {text.strip()}",
              flush=True)

    image = build(recipe, options.tag, options.context, store=_store(), on_progress=progress, run_step=run_build_step,
                  build_args=build_args(options.build_arg))
    print(f"built {image.name}: {len(image.layers)} layers")


def build_args(given: list) -> dict:
    """NAME=value, or NAME alone for the value of this environment's NAME (as Docker)."""
    import os

    args = {}
    for text in given:
        name, equals, value = text.partition("=")
        if not equals:
            if name not in os.environ:
                continue  # Docker: an unset NAME is left to the ARG's default
            value = os.environ[name]
        args[name] = value
    return args


def cmd_commit(options):
    from labkit.images.containers import commit_container
    from labkit.runtime.client.state import find_container

    image = commit_container(find_container(options.container), options.image, options.message, store=_store())
    print(f"committed {options.container} as {image.name} (layer {image.layers[-1][7:19]})")


IMAGE_VERBS = [
    Verb("ls", "list images", cmd_ls),
    Verb("inspect", "the image's manifest as JSON", cmd_inspect, (option("image"),)),
    Verb("history", "the steps that made the image", cmd_history, (option("image"),)),
    Verb("layers", "the image's layers, bottom first, with sizes", cmd_layers, (option("image"),)),
    Verb("diff", "what a layer of an image, or a container, changed", cmd_diff, (
        option("image", metavar="IMAGE|CONTAINER"),
        option("--layer", type=int, help="layer index (default: the top one)"),
    )),
    Verb("rm", "remove images and the layers nothing else uses", cmd_rm, (option("images", nargs="+"),)),
    Verb("prune", "remove layers no image or container uses", cmd_prune),
    Verb("import", "import an OCI layout, docker save archive or rootfs", cmd_import, (
        option("path"),
        option("--name", help="name for the image (default: from the archive)"),
        option("--ref", help="which image of a multi-image archive"),
        option("--allow-devices", action="store_true", help="keep device nodes (root only)"),
        option("--keep-setuid", action="store_true", help="keep setuid/setgid bits"),
    )),
    Verb("export", "export an image as an OCI layout, docker archive or rootfs", cmd_export, (
        option("image"),
        option("path"),
        option("--format", choices=("oci", "docker", "rootfs"), default="oci"),
        option("--compression", choices=("gzip", "none", "zstd"), default="gzip"),
    )),
]

# `labkit build --build-arg` and `%%image build --build-arg`: one option.
BUILD_ARG = option("--build-arg", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a value for an ARG of the Dockerfile (NAME alone: this environment's value)")

# `labkit image VERB` and `%image VERB` are both made from IMAGE_VERBS.
VERBS = (
    Verb("image", "list, inspect, import, export and remove images", verbs=IMAGE_VERBS),
    Verb("build", "build an image from a Dockerfile (offline: FROM names a local image)", cmd_build, (
        option("-t", "--tag", required=True, help="name of the image to make"),
        option("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)"),
        BUILD_ARG,
        option("context", nargs="?", default=".", help="directory COPY reads from"),
    )),
    Verb("commit", "save a container's changes as a new image", cmd_commit, (
        option("container"),
        option("image"),
        option("-m", "--message", default=""),
    )),
)


def add_subcommands(subparsers) -> None:
    add_verbs(subparsers, VERBS)


def main(argv=None) -> int:
    parser = parser_for(VERBS, prog="labkit", description="labkit images", metavar="COMMAND")
    return dispatch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
