"""`python -m labkit`: the `labkit` command (the kernelspec starts kernels through it)."""

from labkit.cli import command

command()
