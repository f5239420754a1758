"""A check on a socket's other end, for the helper and a container's supervisor alike (a
supervisor runs none of the helper's code: runtime/supervisor/)."""

import socket


def peer_gone(sock: socket.socket | int) -> bool:
    """Has the other end closed this stream or seqpacket socket (a socket, or an fd of one
    that stays open)? Asked without waiting, and without taking what waits to be read
    (MSG_PEEK); an error on the socket counts as gone."""
    own = isinstance(sock, int)
    if own:
        sock = socket.socket(fileno=sock)
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        if own:
            sock.detach()   # the fd stays the caller's
