"""Compiled seccomp filters, kept so that libseccomp runs once per profile, not per start.

libseccomp takes ~20 ms of CPU to turn Docker's profile into BPF. The helper keeps each
program in memory, and on disk under `LABKIT_HOME/cache/seccomp/` named by a hash of
everything it depends on (the profile, the capabilities, libseccomp's version, the
machine and kernel), because `labkit run` starts a helper of its own every time.
LABKIT_HOME belongs to root: a filter read back from it is as trusted as the images are.
"""

import json
import os

from labkit.files import write_atomically
from labkit.home import labkit_home

_in_memory = {}


def seccomp_filter(security) -> bytes | None:
    """The BPF for a SecurityPlan (None: unconfined)."""
    if security.seccomp is None:
        return None
    named = security.seccomp if security.seccomp == "default" else json.dumps(security.seccomp, sort_keys=True)
    key = (named, tuple(sorted(security.capabilities)))
    program = _in_memory.get(key)
    if program is None:
        program = _from_disk_or_compiled(_profile_json(security.seccomp), security.capabilities)
        _in_memory[key] = program
    return program


def _profile_json(seccomp) -> dict:
    if seccomp == "default":
        from labkit.security.default_seccomp import default_profile

        return default_profile()
    return seccomp


def _from_disk_or_compiled(profile, capabilities) -> bytes:
    from labkit.linux import seccomp

    identity = json.dumps([profile, sorted(capabilities), seccomp.libseccomp_version(), os.uname().machine,
                           os.uname().release, seccomp.PROGRAM_FORMAT], sort_keys=True)
    path = labkit_home() / "cache" / "seccomp" / (_sha256(identity.encode()).hexdigest() + ".bpf")
    try:
        program = path.read_bytes()
        if program and len(program) % 8 == 0:  # whole struct sock_filter entries
            return program
    except OSError:
        pass
    program = seccomp.Profile.from_json(profile, source="of this container").compile(capabilities)
    _store(path, program)
    return program


def _sha256(data: bytes):
    """SHA-256 from the interpreter's own module: `hashlib` loads OpenSSL first (3.5 of its
    5 ms import here), which every `labkit run` paid for this one hash. The same digest;
    hashlib where the interpreter was built without it."""
    try:
        from _sha2 import sha256   # 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256   # 3.10, 3.11
        except ImportError:
            from hashlib import sha256
    return sha256(data)


def _store(path, program) -> None:
    """Written whole or not at all (rename); a cache that cannot be written is only slower."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, program, mode=0o600)
    except OSError:
        pass
