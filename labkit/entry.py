"""The `labkit` program's first module: as small as it can be, since `labkit run` leaves it.

`labkit run` forks its helper from itself, and that fork must not run a file a container
can reach (labkit/linux/sealed_exe.py): the command is executed again from the sealed
interpreter first. Here that happens before the command line's parser and tables are
imported (labkit.cli: argparse and the option tables, ~15 ms of CPU here, half a `python
-c pass`), which the sealed process imports anyway; every other verb goes straight on.
"""

import gc
import sys


def command():
    if sys.argv[1:2] == ["run"]:   # labkit.cli.main's test for the verb, when nothing comes before it
        from labkit.linux.sealed_exe import run_sealed

        run_sealed()
        gc.disable()   # as cmd_run does, from before the imports (~4 % of their CPU here)
    from labkit.cli import command as labkit_command

    return labkit_command()
