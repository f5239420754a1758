"""Where labkit keeps images, container state and caches (LABKIT_HOME)."""

import os
from pathlib import Path


def labkit_home() -> Path:
    """`$LABKIT_HOME`, else /var/lib/labkit as root, else ~/.local/share/labkit."""
    configured = os.environ.get("LABKIT_HOME")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/labkit")
    return Path.home() / ".local" / "share" / "labkit"
