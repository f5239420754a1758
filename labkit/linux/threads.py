"""A call made in a thread of its own: for what a kernel lets one thread change without the
rest of the process (setns into a network namespace, unshare(CLONE_FS) and chroot)."""

import threading


def call_in_thread(name: str, fn, *args, daemon: bool = False, **kwargs):
    """Run `fn(*args, **kwargs)` in a new thread called `name`, wait for it, and return what
    it returned or raise what it raised, in the caller's thread. The thread ends with the
    call, so whatever `fn` changed about its thread goes with it."""
    outcome = {}

    def work():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 — handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=work, name=name, daemon=daemon)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
