"""The build cache: which layer a build step made, keyed by everything that decides it.

A key is the sha256 of the parent layer stack, the instruction, the config the step
ran under (env, workdir) and, for COPY, the copied files' names, modes and content.
A hit needs the layer to still be in the store (prune may have removed it).
"""

import hashlib
import json

from labkit.files import write_atomically


def step_key(parent_layers: list, instruction: str, env: list, workdir: str, content: str = "") -> str:
    material = json.dumps({"parent": list(parent_layers), "instruction": instruction,
                           "env": list(env), "workdir": workdir, "content": content}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


class BuildCache:
    """Kept beside a labkit.images.store.Store (which prunes it; so this module does not
    import that one)."""

    def __init__(self, store):
        self.store = store
        self.root = store.cache_root

    def get(self, key: str) -> str | None:
        try:
            digest = json.loads((self.root / key).read_text())["layer"]
        except (OSError, ValueError, KeyError):
            return None
        if not isinstance(digest, str) or not self.store.has_layer(digest):
            return None
        return digest

    def put(self, key: str, digest: str, step: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.root / key, json.dumps({"layer": digest, "step": step}))

    def forget_missing_layers(self) -> int:
        forgotten = 0
        if not self.root.is_dir():
            return forgotten
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                entry.unlink(missing_ok=True)  # a leftover from an interrupted put
                forgotten += 1
            elif self.get(entry.name) is None:
                entry.unlink(missing_ok=True)
                forgotten += 1
        return forgotten
