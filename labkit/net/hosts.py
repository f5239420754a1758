"""/etc/hosts of bridge containers: each lists itself and the other containers on the
bridge by name, so that `ping web` works without a DNS server.

The file lives in the container's directory and is bind-mounted over the init layer's empty
placeholder (as Docker does), so it is never in a layer and never committed. A bind mount
pins the inode: rewriting the file *in place* (same inode) updates what a running container
sees; replacing it by rename would not.
"""


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


def _rewrite(path, change) -> None:
    try:
        with open(path, "r+") as handle:
            lines = handle.readlines()
            handle.seek(0)
            handle.write("".join(change(lines)))
            handle.truncate()
    except FileNotFoundError:
        pass  # that container is gone or not made yet: nothing to update
