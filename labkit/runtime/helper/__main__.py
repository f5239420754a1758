"""`python -m labkit.runtime.helper`: the helper process's entry point (runtime/client/
helper_client.py starts it so, with the socket's fd in LABKIT_HELPER_FD)."""

from labkit.linux.sealed_exe import adopt_preload
from labkit.runtime.helper.zygote import main

adopt_preload()  # before anything it starts could inherit the sealed libpython
main()
