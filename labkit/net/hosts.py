"""/etc/hosts of bridge containers: each lists itself and the other containers on the
bridge by name, so that `ping web` works without a DNS server.

The file lives in the container's directory and is bind-mounted over the init layer's empty
placeholder (as Docker does), so it is never in a layer and never committed. A bind mount
pins the inode: rewriting the file *in place* (same inode) updates what a running container
sees; replacing it by rename would not.

The container may write its file, so a file of another container is read with a bound
(HOSTS_MOST): one filled with 300 MB made every other start and stop of its home read it
whole (12 s and 1.2 GB in an audit). Such a file is left as its container made it.
"""

import os

from labkit.files import read_regular

HOSTS_MOST = 1 << 20   # bytes: no hosts file labkit writes comes near; a larger one was filled from inside


def line(ip: str, names) -> str:
    return f"{ip}\t{' '.join(dict.fromkeys(names))}\n"


def for_new_container(base: str, ip: str, names, peers: dict) -> str:
    """The runtime's hosts text, with our own name on our bridge address instead of
    127.0.1.1, and a line per peer {ip: names}."""
    kept = [text for text in base.splitlines(keepends=True) if not text.startswith("127.0.1.1")]
    return "".join(kept) + line(ip, names) + "".join(line(peer_ip, peer_names) for peer_ip, peer_names in peers.items())


def add(path, ip: str, names) -> None:
    _rewrite(path, lambda lines: [text for text in lines if not _is_for(text, ip)] + [line(ip, names)])


def remove(path, ip: str) -> None:
    _rewrite(path, lambda lines: [text for text in lines if not _is_for(text, ip)])


def _is_for(text, ip) -> bool:
    return text.split("\t", 1)[0].split(" ", 1)[0] == ip


def read(path) -> str | None:
    """A container's hosts text; None where there is none, or where its container made it
    larger than HOSTS_MOST."""
    try:
        data = read_regular(path, HOSTS_MOST + 1)
    except FileNotFoundError:
        return None
    return data.decode("utf-8", "replace") if len(data) <= HOSTS_MOST else None


def _rewrite(path, change) -> None:
    try:
        with open(path, "r+") as handle:
            if os.fstat(handle.fileno()).st_size > HOSTS_MOST:
                return   # filled from inside: left as its container made it
            text = handle.read(HOSTS_MOST + 1)
            if len(text) > HOSTS_MOST:
                return
            handle.seek(0)
            handle.write("".join(change(text.splitlines(keepends=True))))
            handle.truncate()
    except FileNotFoundError:
        pass  # that container is gone or not made yet: nothing to update
