"""Tab completion for `%container`, `%%container`, `%image` and `%%image`, through
IPython's completer hook (`set_hook("complete_command", ..., str_key=...)`): the options
and verbs of the magic's own argparse parser, the kernel's container names where a
verb takes a container, image names after `--image` (and where a verb takes an image).

Without it, `%%container --mem<Tab>` offered Python names (`memoryview`). The candidates
come from the same parsers the magics parse with, so a new option completes with no edit
here.
"""

import argparse
import shlex

# Values completed after these options (by their argparse dest).
CHOICES = {"network": ("none", "host", "bridge", "container:"), "signal": ("TERM", "KILL", "INT", "HUP", "USR1")}


def parser_at(parser, words):
    """The (sub)parser the words lead to, and the action the last word left waiting for
    a value (None when the next word is free)."""
    waiting = None
    for word in words:
        if waiting is not None:
            waiting = None
            continue
        if word.startswith("-"):
            action = parser._option_string_actions.get(word.split("=", 1)[0])
            if action is not None and action.nargs != 0 and "=" not in word:
                waiting = action
            continue
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None and word in sub.choices:
            parser = sub.choices[word]
    return parser, waiting


def candidates(parser, words, containers=(), images=()) -> list:
    """What may come next after `words` (the line's words before the one being typed)."""
    parser, waiting = parser_at(parser, words)
    if waiting is not None:
        if waiting.dest == "image":
            return sorted(images)
        return list(CHOICES.get(waiting.dest, ()))
    found = [flag for flag in parser._option_string_actions if flag.startswith("--")] + \
            [flag for flag in parser._option_string_actions if not flag.startswith("--")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices)
        elif not action.option_strings and action.dest in ("target", "targets", "reference"):
            found += sorted(containers)
        elif not action.option_strings and action.dest in ("image", "images"):
            found += sorted(images)
    return found


def complete(parser, event, containers=(), images=()) -> list:
    """The matches for IPython's completer `event` (its line up to the cursor)."""
    text = event.text_until_cursor
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    if words and not text[-1:].isspace():
        words = words[:-1]   # the word being typed
    return candidates(parser, words[1:], containers, images)   # [0] is the magic's own name


def image_names() -> list:
    try:
        from labkit.images import Store

        return Store().names()
    except Exception:  # noqa: BLE001 — no store yet, or not readable: nothing to offer
        return []


def container_names() -> list:
    from labkit.runtime import running_containers

    return list(running_containers())


def register(ipython, magics) -> None:
    """Hook completers for each magic's name: `{"%container": parser, ...}` (a callable
    that returns the parser for a line)."""
    for name, parser_of in magics.items():
        def completer(_self, event, parser_of=parser_of):
            return complete(parser_of(event.text_until_cursor), event, container_names(), image_names())

        ipython.set_hook("complete_command", completer, str_key=name)
