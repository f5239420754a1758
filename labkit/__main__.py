"""`python -m labkit`: the `labkit` command (the kernelspec starts kernels through it)."""

from labkit.entry import command

command()
