"""The names labkit's bridges go by, apart from their netlink side (labkit.net.bridge): the
sweep before every helper start reads them without loading netlink (labkit.net.leftovers).

Bridges are named `labkit0`, `labkit1`, … (handed out under a host-wide lock), and each
one's interface alias records which LABKIT_HOME it serves."""

PREFIX = "labkit"
ALIAS = "labkit home "


def alias_for(home) -> str:
    return (ALIAS + str(home))[:255]   # IFALIASZ: the kernel keeps 255 bytes
