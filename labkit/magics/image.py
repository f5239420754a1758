"""`%image VERB` and `%%image build`: images from a notebook, thin over labkit.images.

    %image ls
    %image inspect NAME        %image history NAME        %image layers NAME
    %image diff NAME [--layer N]   (or a container's name: what it changed)
    %image rm NAME [NAME ...]  %image prune   %image import PATH   %image export NAME PATH

    %%image build NAME [--context DIR]
    FROM busybox
    RUN echo hello > /greeting

The line verbs are `labkit image`'s own table (labkit.images.cli.IMAGE_VERBS): the same
verbs, options and functions, so the magic and the CLI cannot drift.
"""

import shlex

from IPython.core.magic import Magics, line_cell_magic, magics_class

from labkit.errors import LabkitError
from labkit.images.cli import BUILD_ARG, IMAGE_VERBS, build_args  # the list itself: a verb added there is here too
from labkit.magics.errors import HelpShown, MagicParser, UsageError, fail_shortly
from labkit.verbs import Verb, add_options, option, parser_for

BUILD = Verb("build", "build an image from the recipe in the cell body", options=(
    option("name", metavar="NAME", help="name of the image to make"),
    option("--context", default=".", help="directory COPY reads from (default: .)"),
    BUILD_ARG,
))


def line_parser():
    return parser_for(IMAGE_VERBS, MagicParser, prog="%image", description="Images in this LABKIT_HOME "
                      "(the verbs of `labkit image`); %%image build NAME makes one from the cell body.")


def build_parser():
    parser = MagicParser(prog="%%image build", description=BUILD.help)
    add_options(parser, BUILD.options)
    return parser


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
    def __init__(self, shell=None):
        super().__init__(shell)
        self._line_parser, self._build_parser = line_parser(), build_parser()

    def completion_parsers(self) -> dict:
        """For Tab (labkit.magics.completion): the parser each magic's line is read with."""
        return {"%%image": lambda line: self._build_parser, "%image": lambda line: self._line_parser}

    @line_cell_magic
    def image(self, line, cell=None):
        """%image VERB (the verbs of `labkit image`; %image -h lists them); %%image build NAME."""
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"%image: cannot parse {line!r}: {error}") from None
        try:
            if cell is not None:
                if words[:1] != ["build"]:
                    raise UsageError(f"%%image takes only 'build NAME' as a cell magic, not {' '.join(words)!r}\n"
                                     f"{self._build_parser.format_usage().strip()}")
                return self._build(self._build_parser.parse_args(words[1:]), cell)
            if words[:1] == ["build"]:
                raise UsageError("%image build needs the recipe as the cell body: use %%image build NAME")
            options = self._line_parser.parse_args(words)
            return options.func(options)
        except HelpShown:
            return None
        except UsageError:
            raise
        except LabkitError as error:
            raise fail_shortly(error) from None

    def _build(self, options, recipe):
        from labkit.images.builder import build
        from labkit.runtime.client.build_step import run_build_step

        def progress(index, total, text):
            line = f"  {text.strip()}" if text.startswith(" ->") else f"Step {index + 1}/{total} : {text}"
            print(line, flush=True)

        image = build(recipe, options.name, options.context, on_progress=progress, run_step=run_build_step,
                      build_args=build_args(options.build_arg))
        print(f"built {image.name}: {len(image.layers)} layers")
