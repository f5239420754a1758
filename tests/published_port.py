"""What a client on the host's loopback first reads from a published port, for the test
scripts that run as a throw-away user (tests/test_rootless_bridge.py and
test_rootless_network.py): they get this function's source (`SOURCE`), not an import,
since such a user's Python does not see the tests directory."""

import inspect


def first_answer(port: int, tries: int = 300, pause: float = 0.05) -> str:
    """The first non-empty line a connection to 127.0.0.1:`port` reads, trying up to
    `tries` times `pause` s apart (the server inside may not listen yet); "" if none came."""
    import socket
    import time

    for _ in range(tries):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
                received = client.recv(100).decode().strip()
            if received:
                return received
        except OSError:
            pass
        time.sleep(pause)
    return ""


SOURCE = inspect.getsource(first_answer) + "\n\n"
