"""`labkit image …`, `labkit build` and `labkit commit`: thin over labkit.images.

Also runnable alone: python -m labkit.images.cli image ls
"""

import argparse
import json
import sys
from pathlib import Path

from labkit.errors import ImageError, LabkitError


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

    print("\n".join(changes(options.image, options.layer, _store()).lines()))


def cmd_rm(options):
    store = _store()
    for name in options.images:
        removed = store.remove_image(name)
        print(f"removed image {name} and {len(removed)} layers no one else uses")


def cmd_prune(options):
    removed = _store().prune()
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

    recipe_path = Path(options.file) if options.file else Path(options.context) / "Dockerfile"
    try:
        recipe = recipe_path.read_text()
    except OSError as error:
        raise ImageError(f"cannot read the recipe {recipe_path}: {error.strerror}; give one with -f") from None

    def progress(index, total, text):
        print(f"Step {index + 1}/{total} : {text.strip()}" if not text.startswith(" ->") else f"  {text.strip()}",
              flush=True)

    image = build(recipe, options.tag, options.context, store=_store(), on_progress=progress)
    print(f"built {image.name}: {len(image.layers)} layers")


def cmd_commit(options):
    from labkit.images.containers import commit_container

    image = commit_container(options.container, options.image, options.message, store=_store())
    print(f"committed {options.container} as {image.name} (layer {image.layers[-1][7:19]})")


def add_subcommands(subparsers) -> None:
    image = subparsers.add_parser("image", help="list, inspect, import, export and remove images")
    verbs = image.add_subparsers(dest="image_verb", metavar="VERB")
    verbs.required = True
    verbs.add_parser("ls", help="list images").set_defaults(func=cmd_ls)
    for verb, function, text in (("inspect", cmd_inspect, "the image's manifest as JSON"),
                                 ("history", cmd_history, "the steps that made the image"),
                                 ("layers", cmd_layers, "the image's layers, bottom first, with sizes")):
        parser = verbs.add_parser(verb, help=text)
        parser.add_argument("image")
        parser.set_defaults(func=function)
    diff = verbs.add_parser("diff", help="what a layer of an image, or a container, changed")
    diff.add_argument("image", metavar="IMAGE|CONTAINER")
    diff.add_argument("--layer", type=int, help="layer index (default: the top one)")
    diff.set_defaults(func=cmd_diff)
    remove = verbs.add_parser("rm", help="remove images and the layers nothing else uses")
    remove.add_argument("images", nargs="+")
    remove.set_defaults(func=cmd_rm)
    verbs.add_parser("prune", help="remove layers no image or container uses").set_defaults(func=cmd_prune)
    load = verbs.add_parser("import", help="import an OCI layout, docker save archive or rootfs")
    load.add_argument("path")
    load.add_argument("--name", help="name for the image (default: from the archive)")
    load.add_argument("--ref", help="which image of a multi-image archive")
    load.add_argument("--allow-devices", action="store_true", help="keep device nodes (root only)")
    load.add_argument("--keep-setuid", action="store_true", help="keep setuid/setgid bits")
    load.set_defaults(func=cmd_import)
    save = verbs.add_parser("export", help="export an image as an OCI layout, docker archive or rootfs")
    save.add_argument("image")
    save.add_argument("path")
    save.add_argument("--format", choices=("oci", "docker", "rootfs"), default="oci")
    save.add_argument("--compression", choices=("gzip", "none", "zstd"), default="gzip")
    save.set_defaults(func=cmd_export)

    build = subparsers.add_parser("build", help="build an image from a recipe (a Dockerfile subset)")
    build.add_argument("-t", "--tag", required=True, help="name of the image to make")
    build.add_argument("-f", "--file", help="the recipe (default: CONTEXT/Dockerfile)")
    build.add_argument("context", nargs="?", default=".", help="directory COPY reads from")
    build.set_defaults(func=cmd_build)

    commit = subparsers.add_parser("commit", help="save a container's changes as a new image")
    commit.add_argument("container")
    commit.add_argument("image")
    commit.add_argument("-m", "--message", default="")
    commit.set_defaults(func=cmd_commit)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description="labkit images")
    subparsers = parser.add_subparsers(dest="verb", metavar="COMMAND")
    subparsers.required = True
    add_subcommands(subparsers)
    options = parser.parse_args(argv)
    try:
        return options.func(options) or 0
    except LabkitError as error:
        print(f"labkit: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
