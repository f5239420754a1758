"""Verbs and options as data: the tables `labkit …`, `%container VERB` and `%image VERB`
build their argparse parsers from, so a new verb or flag is one entry in one table.

    VERBS = (
        Verb("ls", "list images", run=cmd_ls),
        Verb("rm", "remove images", cmd_rm, (option("images", nargs="+"),)),
    )
    add_verbs(subparsers, VERBS)        # in the CLI, and the same in a magic's parser

An option is argparse's own flags and keywords, so what a user types is what argparse
documents; a container option also names the ContainerSpec field it sets (`spec_field`),
which is how `labkit run` and `%%container` turn options into a spec without a second
list (labkit.cli.spec_from_options).

Plain classes, not dataclasses: `labkit --help` imports this module, argparse and
labkit.errors, nothing else (the dataclasses module alone costs more than argparse).
"""

import argparse
import sys

from labkit.errors import LabkitError


class Option:
    """One argument: argparse's flags (`--memory`, `-m`) or a positional's name, its
    keywords, and for a container option the ContainerSpec field its value goes to
    (`to_spec` turns the value into fields when it is not one field's value)."""

    def __init__(self, flags: tuple, kwargs: dict, spec_field: str | None = None, to_spec=None):
        self.flags, self.kwargs, self.spec_field, self.to_spec = tuple(flags), dict(kwargs), spec_field, to_spec
        # The attribute argparse stores the value in (its own rule), worked out once: a
        # %%container cell reads every option's on each run.
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        self.dest = self.kwargs.get("dest") or long.lstrip("-").replace("-", "_")

    def __repr__(self):
        return f"option{self.flags!r}"

    def add_to(self, parser) -> None:
        parser.add_argument(*self.flags, **self.kwargs)

    def with_help(self, text: str) -> "Option":
        return Option(self.flags, {**self.kwargs, "help": text}, self.spec_field, self.to_spec)


def option(*flags, spec_field=None, to_spec=None, **kwargs) -> Option:
    return Option(flags, kwargs, spec_field, to_spec)


class OneOf:
    """Options that exclude each other (argparse's mutually exclusive group)."""

    def __init__(self, options: tuple):
        self.options = tuple(options)

    def add_to(self, parser) -> None:
        group = parser.add_mutually_exclusive_group()
        for member in self.options:
            member.add_to(group)


def one_of(*options) -> OneOf:
    return OneOf(options)


class AllOf:
    """Every option of a table (a list others add to), read when a parser is built, less
    those whose destination is in `skip`: `labkit run` and `%container run` both take
    all_of(CONTAINER_OPTIONS), so an option added to that list reaches both."""

    def __init__(self, table: list, skip: tuple = ()):
        self.table, self.skip = table, tuple(skip)

    def add_to(self, parser) -> None:
        for entry in self.table:
            if not (isinstance(entry, Option) and entry.dest in self.skip):
                entry.add_to(parser)


def all_of(table: list, skip=()) -> AllOf:
    return AllOf(table, skip)


class Verb:
    """A verb: its name, one line of help, what runs it (called with the parsed options;
    None when the front end dispatches by name) and its options, or its sub-verbs
    (`labkit image ls`)."""

    def __init__(self, name: str, help: str, run=None, options: tuple = (), verbs: tuple = (),
                 metavar: str = "VERB", description: str | None = None):
        self.name, self.help, self.run = name, help, run
        self.options, self.verbs = options, verbs  # kept as given: a list stays open to additions
        self.metavar, self.description = metavar, description

    def __repr__(self):
        return f"Verb({self.name!r})"


def add_options(parser, options) -> None:
    for entry in options:
        entry.add_to(parser)


def add_verb(subparsers, verb: Verb):
    """The parser of one verb (and of its sub-verbs) in `subparsers`."""
    parser = subparsers.add_parser(verb.name, help=verb.help, description=verb.description or verb.help)
    add_options(parser, verb.options)
    if verb.verbs:
        add_verbs(parser.add_subparsers(dest=f"{verb.name.replace('-', '_')}_verb", metavar=verb.metavar),
                  verb.verbs)
    if verb.run is not None:
        parser.set_defaults(func=verb.run)
    return parser


def add_verbs(subparsers, verbs) -> None:
    subparsers.required = True
    for verb in verbs:
        add_verb(subparsers, verb)


def parser_for(verbs, parser_class=argparse.ArgumentParser, dest="verb", metavar="VERB", **keywords):
    """A whole parser whose first word is one of `verbs` (a magic's, or a module's alone)."""
    parser = parser_class(**keywords)
    add_verbs(parser.add_subparsers(dest=dest, metavar=metavar), verbs)
    return parser


def dispatch(options) -> int:
    """Run a parsed verb: a LabkitError is one line for the user, not a traceback."""
    try:
        return options.func(options) or 0
    except LabkitError as error:
        print(f"labkit: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
