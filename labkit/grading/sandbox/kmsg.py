"""The kernel's own log (/dev/kmsg) from a point on: OOM kills and refused forks name
the cgroup they happened in, which is the grader's evidence that a limit held (the
student's kernel can print anything, but not into /dev/kmsg's records of our cgroups)."""

import errno
import os
import re


class KernelLog:
    """Opened when a sandbox is made; `since_open()` reads every record logged after."""

    def __init__(self, path="/dev/kmsg"):
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None  # no /dev/kmsg (or not readable): the log is empty, never made up
        self.records = []

    def since_open(self) -> list:
        """[(seconds since boot, text, syslog prefix)] of every record since the log was
        opened. The prefix (facility << 3 | level) tells the kernel's own records (facility
        0) from a write to /dev/kmsg, which the kernel makes LOG_USER."""
        while self.fd is not None:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno == errno.EPIPE:  # overwritten before we read it: skip on
                    continue
                raise
            if not record:
                break
            header, _, text = record.decode("utf-8", "replace").partition(";")
            fields = header.split(",")
            self.records.append((int(fields[2]) / 1e6, text.split("\n", 1)[0], int(fields[0])))
        return list(self.records)

    def naming(self, cgroup_names) -> list:
        """The records that name one of `cgroup_names` (paths below a hierarchy's root, as
        the kernel prints them: "/labkit-sandbox/x") or a cgroup below one of them."""
        patterns = [re.compile(re.escape(name.rstrip("/")) + r"(?:[/,\s]|$)") for name in cgroup_names if name]
        return [record for record in self.since_open() if any(p.search(record[1]) for p in patterns)]

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
