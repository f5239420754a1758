"""Plain-text views of images shared by the CLI and the notebook magic."""

from labkit.images.layers import tree_size
from labkit.images.store import Image, Store


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def image_rows(store: Store) -> list:
    rows = [("NAME", "LAYERS", "SIZE", "TOP LAYER")]
    for name in store.names():
        image = store.image(name)
        size = sum(tree_size(d) for d in image.layer_dirs)
        rows.append((name, str(len(image.layers)), human_size(size), image.layers[-1][7:19] if image.layers else "-"))
    return rows


def history_rows(image: Image) -> list:
    rows = [("STEP", "CREATED", "SIZE", "LAYER")]
    for entry in reversed(image.history):
        layer = entry.get("layer", "")
        rows.append((entry.get("created_by", "")[:70], entry.get("created", ""), human_size(entry.get("size", 0)),
                     layer[7:19] if layer else "-"))
    return rows


def layer_rows(image: Image) -> list:
    rows = [("#", "LAYER", "SIZE", "SHARED WITH")]
    users = {}
    for name in image.store.names():
        if name != image.name:
            for digest in image.store.image(name).layers:
                users.setdefault(digest, set()).add(name)
    for index, (digest, directory) in enumerate(zip(image.layers, image.layer_dirs)):
        rows.append((str(index), digest, human_size(tree_size(directory)), ", ".join(sorted(users.get(digest, ()))) or "-"))
    return rows


def table(rows: list) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
