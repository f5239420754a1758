"""`python -m labkit.runtime.helper`: the helper process's entry point (runtime/client/
helper_client.py starts it so, with the socket's fd in LABKIT_HELPER_FD)."""

import os

from labkit.linux.sealed_exe import adopt_preload
from labkit.runtime.helper.zygote import main

adopt_preload()  # before anything it starts could inherit the sealed libpython
# LABKIT_ONE_CONTAINER: the owner starts one container and leaves (`labkit run`), as
# a forked helper is told by its argument.
main(one_container=os.environ.pop("LABKIT_ONE_CONTAINER", "") == "1")
