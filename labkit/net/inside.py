"""Inside the container, just before exec: give eth0 its address and add the default
route via the bridge (what `ifconfig eth0 ADDR netmask M` and `route add default gw GW`
do). eth0 is up already: whoever plugged it in brought it up and waited for the kernel to
finish (labkit.net.veth.make_ready).

Why ioctls and not pyroute2: this runs in the freshly forked container process, on the
path of every container start. Importing pyroute2 costs ~100 ms; these three ioctls
cost microseconds and need only `socket`, `struct`, `fcntl` and `ctypes`, which the
helper has loaded already. No fork, no thread.
"""

import ctypes
import fcntl
import socket
import struct

SIOCADDRT = 0x890B
SIOCSIFADDR, SIOCSIFNETMASK = 0x8916, 0x891C
RTF_UP, RTF_GATEWAY = 0x1, 0x2


class _Sockaddr(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_char * 14)]


class _Rtentry(ctypes.Structure):
    """struct rtentry from <linux/route.h> (the layout SIOCADDRT reads)."""
    _fields_ = [
        ("rt_pad1", ctypes.c_ulong), ("rt_dst", _Sockaddr), ("rt_gateway", _Sockaddr),
        ("rt_genmask", _Sockaddr), ("rt_flags", ctypes.c_ushort), ("rt_pad2", ctypes.c_short),
        ("rt_pad3", ctypes.c_ulong), ("rt_pad4", ctypes.c_void_p), ("rt_metric", ctypes.c_short),
        ("rt_dev", ctypes.c_char_p), ("rt_mtu", ctypes.c_ulong), ("rt_window", ctypes.c_ulong),
        ("rt_irtt", ctypes.c_ushort),
    ]


def _sockaddr_in(address: str) -> bytes:
    # struct sockaddr_in: family, port (0), 4 address bytes, 8 bytes of zero padding
    return struct.pack("=H2s4s8s", socket.AF_INET, b"", socket.inet_aton(address), b"")


def _ifreq(interface: str, payload: bytes) -> bytes:
    return struct.pack("16s", interface.encode()) + payload.ljust(24, b"\0")


def configure(config: dict) -> None:
    """config: {"interface", "address", "netmask", "gateway"} (from labkit.net.hooks)."""
    interface = config["interface"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFADDR, _ifreq(interface, _sockaddr_in(config["address"])))
        fcntl.ioctl(sock, SIOCSIFNETMASK, _ifreq(interface, _sockaddr_in(config["netmask"])))
        if config.get("gateway"):
            add_default_route(sock, config["gateway"])


def add_default_route(sock, gateway: str) -> None:
    route = _Rtentry()
    for field, address in (("rt_dst", "0.0.0.0"), ("rt_gateway", gateway), ("rt_genmask", "0.0.0.0")):
        ctypes.memmove(ctypes.byref(getattr(route, field)), _sockaddr_in(address), 16)
    route.rt_flags = RTF_UP | RTF_GATEWAY
    fcntl.ioctl(sock, SIOCADDRT, bytes(route))
