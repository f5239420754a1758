"""Draw the labkit kernel logo (three stacked image layers inside a box) and write the
kernelspec to both places it lives: kernel/ (for people) and labkit/kernelspec/ (shipped
in the package). tests/test_kernel.py fails if the two copies drift apart.

    python kernel/make_logo.py
"""

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

HERE = Path(__file__).resolve().parent
PACKAGE_COPY = HERE.parent / "labkit" / "kernelspec"
LAYERS = ("#1f77b4", "#2ca02c", "#ff7f0e")  # read-only layers, bottom to top


def draw(size: int, path: Path) -> None:
    figure = plt.figure(figsize=(1, 1), dpi=size)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.axis("off")
    axes.add_patch(FancyBboxPatch((0.08, 0.08), 0.84, 0.84, boxstyle="round,pad=0,rounding_size=0.12",
                                  facecolor="#263238", edgecolor="none"))
    for index, colour in enumerate(LAYERS):
        axes.add_patch(Rectangle((0.2, 0.2 + index * 0.21), 0.6, 0.16, facecolor=colour, edgecolor="none"))
    # No "Software" entry: the PNG bytes then depend only on the drawing, not the version.
    figure.savefig(path, dpi=size, transparent=True, metadata={"Software": None})
    plt.close(figure)


def main():
    for size in (32, 64):
        draw(size, HERE / f"logo-{size}x{size}.png")
    PACKAGE_COPY.mkdir(exist_ok=True)
    for name in ("kernel.json", "logo-32x32.png", "logo-64x64.png"):
        shutil.copyfile(HERE / name, PACKAGE_COPY / name)


if __name__ == "__main__":
    main()
