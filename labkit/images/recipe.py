"""The build recipe: a Dockerfile subset (FROM, RUN, COPY, ENV, WORKDIR, CMD, LABEL).

Parsing only; every mistake names its line. Not supported (and said so when met):
multi-stage builds, ARG, ENTRYPOINT, USER, COPY --chown/--from, ADD, heredocs.
"""

import json
import re
import shlex
from dataclasses import dataclass

from labkit.errors import ImageError

INSTRUCTIONS = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "CMD", "LABEL")
NOT_SUPPORTED = ("ADD", "ARG", "ENTRYPOINT", "USER", "EXPOSE", "VOLUME", "ONBUILD", "STOPSIGNAL",
                 "HEALTHCHECK", "SHELL", "MAINTAINER")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Instruction:
    line: int            # 1-based line number where the instruction starts
    keyword: str         # FROM, RUN, ...
    argument: str        # the text after the keyword, continuation lines joined
    value: object        # parsed: str, list or dict depending on the keyword

    @property
    def text(self) -> str:
        return f"{self.keyword} {self.argument}"


def recipe_error(line: int, message: str) -> ImageError:
    return ImageError(f"recipe line {line}: {message}")


def logical_lines(text: str):
    """(line number, text) with comments dropped and backslash continuations joined."""
    pending, start = [], None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # Docker allows comments between continuation lines
        start = start or number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        yield start, " ".join(part for part in pending if part)
        pending, start = [], None
    if pending:
        raise recipe_error(start, "the last instruction ends with '\\' but no line follows")


def parse_recipe(text: str) -> list:
    instructions = []
    for number, line in logical_lines(text):
        word, _, argument = line.partition(" ")
        keyword, argument = word.upper(), argument.strip()
        if keyword in NOT_SUPPORTED:
            raise recipe_error(number, f"{keyword} is not supported by labkit builds "
                                       f"(they understand {', '.join(INSTRUCTIONS)})")
        if keyword not in INSTRUCTIONS:
            raise recipe_error(number, f"unknown instruction {word!r}; labkit builds understand "
                                       f"{', '.join(INSTRUCTIONS)}")
        if not argument:
            raise recipe_error(number, f"{keyword} needs an argument")
        if not instructions and keyword != "FROM":
            raise recipe_error(number, f"the first instruction must be FROM (an image to start from), not {keyword}")
        if instructions and keyword == "FROM":
            raise recipe_error(number, "only one FROM is supported (no multi-stage builds)")
        instructions.append(Instruction(number, keyword, argument, _PARSERS[keyword](number, argument)))
    if not instructions:
        raise ImageError("the recipe is empty; it needs at least a FROM line")
    return instructions


def _json_list(number: int, argument: str):
    if not argument.startswith("["):
        return None
    try:
        value = json.loads(argument)
    except ValueError as error:
        raise recipe_error(number, f"{argument!r} starts like a JSON list but is not one ({error})") from None
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise recipe_error(number, "the JSON form must be a non-empty list of strings")
    return value


def _split(number: int, argument: str) -> list:
    try:
        return shlex.split(argument)
    except ValueError as error:
        raise recipe_error(number, f"cannot split {argument!r}: {error}") from None


def _parse_from(number, argument):
    words = argument.split()
    if len(words) != 1 or words[0].startswith("--"):
        raise recipe_error(number, "FROM takes exactly one image name (no options, no AS)")
    return words[0]


def _parse_run(number, argument):
    return _json_list(number, argument) or ["sh", "-c", argument]


def _parse_copy(number, argument):
    words = _json_list(number, argument) or _split(number, argument)
    if any(word.startswith("--") for word in words):
        raise recipe_error(number, f"COPY options ({', '.join(w for w in words if w.startswith('--'))}) are not supported")
    if len(words) < 2:
        raise recipe_error(number, "COPY needs at least one source and a destination")
    if len(words) > 2 and not words[-1].endswith("/"):
        raise recipe_error(number, "with several sources, COPY's destination must be a directory ending in '/'")
    return {"sources": words[:-1], "destination": words[-1]}


def _pairs(number, argument, keyword) -> dict:
    words = _split(number, argument)
    if keyword == "ENV" and words and "=" not in words[0]:
        words = [f"{words[0]}={' '.join(words[1:])}"]  # legacy form: ENV NAME value with spaces
    pairs = {}
    for word in words:
        key, equals, value = word.partition("=")
        if not equals or not key:
            raise recipe_error(number, f"{keyword} expects NAME=value pairs, got {word!r}")
        if keyword == "ENV" and not ENV_NAME.fullmatch(key):
            raise recipe_error(number, f"{key!r} is not a valid environment variable name")
        pairs[key] = value
    return pairs


def _parse_workdir(number, argument):
    return argument


def _parse_cmd(number, argument):
    return _json_list(number, argument) or ["sh", "-c", argument]


_PARSERS = {
    "FROM": _parse_from,
    "RUN": _parse_run,
    "COPY": _parse_copy,
    "ENV": lambda number, argument: _pairs(number, argument, "ENV"),
    "WORKDIR": _parse_workdir,
    "CMD": _parse_cmd,
    "LABEL": lambda number, argument: _pairs(number, argument, "LABEL"),
}
