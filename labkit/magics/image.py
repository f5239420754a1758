"""`%image` and `%%image build`: images from a notebook, thin over labkit.images.

    %image ls
    %image inspect NAME        %image history NAME        %image layers NAME
    %image diff NAME [--layer N]   (or a container's name: what it changed)
    %image rm NAME [NAME ...]

    %%image build NAME [--context DIR]
    FROM busybox
    RUN echo hello > /greeting
"""

import json
import shlex

from IPython.core.magic import Magics, line_cell_magic, magics_class

from labkit.magics.errors import UsageError

USAGE = ("usage: %image ls | inspect NAME | history NAME | layers NAME | diff NAME [--layer N] | rm NAME...\n"
         "       %%image build NAME [--context DIR]   (the cell body is the recipe)")
LINE_VERBS = {"ls": 0, "inspect": 1, "history": 1, "layers": 1, "diff": None, "rm": None}


def plot_layers(image):
    """A bar per layer (bottom layer at the bottom) showing its size: where the bytes are."""
    import matplotlib.pyplot as plt

    from labkit.images import get_image
    from labkit.images.layers import tree_size

    image = get_image(image) if isinstance(image, str) else image
    sizes = [tree_size(directory) / (1 << 20) for directory in image.layer_dirs]
    steps = [entry.get("created_by", "")[:40] for entry in image.history if not entry.get("empty_layer")]
    labels = [f"{i}: {digest[7:19]}" + (f"  {steps[i]}" if i < len(steps) else "")
              for i, digest in enumerate(image.layers)]
    figure, axes = plt.subplots(figsize=(8, 0.5 + 0.4 * max(len(sizes), 1)))
    axes.barh(range(len(sizes)), sizes, color="tab:blue")
    axes.set_yticks(range(len(sizes)), labels, fontsize=8)
    axes.set_xlabel("layer size (MiB)")
    axes.set_title(f"image {image.name}: {len(sizes)} layers, {sum(sizes):.1f} MiB")
    figure.tight_layout()
    plt.close(figure)  # shown once, as the cell's value, not again by the inline backend
    return figure


@magics_class
class ImageMagics(Magics):
    @line_cell_magic
    def image(self, line, cell=None):
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"%image: cannot parse {line!r}: {error}\n{USAGE}") from None
        if not words:
            raise UsageError(USAGE)
        verb, arguments = words[0], words[1:]
        if cell is not None:
            if verb != "build":
                raise UsageError(f"%%image takes only 'build NAME' as a cell magic, not {verb!r}\n{USAGE}")
            return self._build(arguments, cell)
        if verb == "build":
            raise UsageError("%image build needs the recipe as the cell body: use %%image build NAME")
        if verb not in LINE_VERBS:
            raise UsageError(f"%image: unknown verb {verb!r}\n{USAGE}")
        expected = LINE_VERBS[verb]
        if (expected is not None and len(arguments) != expected) or (expected is None and not arguments):
            raise UsageError(f"%image {verb}: wrong number of arguments\n{USAGE}")
        getattr(self, f"_{verb}")(arguments)

    def _ls(self, arguments):
        from labkit.images.report import image_rows, table
        from labkit.images.store import Store

        print(table(image_rows(Store())))

    def _inspect(self, arguments):
        from labkit.images import get_image

        print(json.dumps(get_image(arguments[0]).to_dict(), indent=2))

    def _history(self, arguments):
        from labkit.images import get_image
        from labkit.images.report import history_rows, table

        print(table(history_rows(get_image(arguments[0]))))

    def _layers(self, arguments):
        from labkit.images import get_image
        from labkit.images.report import layer_rows, table

        print(table(layer_rows(get_image(arguments[0]))))

    def _diff(self, arguments):
        from labkit.images.containers import changes

        layer = None
        if len(arguments) == 3 and arguments[1] == "--layer" and arguments[2].lstrip("-").isdigit():
            layer = int(arguments[2])
        elif len(arguments) != 1:
            raise UsageError(f"%image diff NAME [--layer N]\n{USAGE}")
        print("\n".join(changes(arguments[0], layer).lines()))

    def _rm(self, arguments):
        from labkit.images.store import Store

        store = Store()
        for name in arguments:
            removed = store.remove_image(name)
            print(f"removed image {name} and {len(removed)} layers no one else uses")

    def _build(self, arguments, recipe):
        from labkit.images.builder import build

        context = "."
        if len(arguments) == 3 and arguments[1] == "--context":
            context = arguments[2]
        elif len(arguments) != 1:
            raise UsageError(f"%%image build NAME [--context DIR]\n{USAGE}")

        def progress(index, total, text):
            line = f"  {text.strip()}" if text.startswith(" ->") else f"Step {index + 1}/{total} : {text}"
            print(line, flush=True)

        image = build(recipe, arguments[0], context, on_progress=progress)
        print(f"built {image.name}: {len(image.layers)} layers")
