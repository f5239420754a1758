"""What runs in the helper process: the small single-threaded server a client starts once
(`python -m labkit.runtime.helper`) and asks for containers over a Unix socket.

    zygote.py        the helper itself: its loop, one handler per request, the teardown
    ready_slots.py   slots made ahead in its idle time, and the hand-over of a plan to one
    __main__.py      the entry point

It forks into runtime/supervisor/ and never imports the client (runtime/client/), whose
end of the socket is runtime/client/helper_client.py. Kept empty of imports: the helper
pays only for what it uses.
"""
