"""The build recipe: a Dockerfile, read by `dockerfile-parse` (lines, continuations,
comments, the `# escape=` directive) and checked here, instruction by instruction,
against the grammar Docker documents (https://docs.docker.com/reference/dockerfile/).

Parsing only: what depends on the build (variables, stages, files) is the builder's.
Everything labkit does not build is listed at once, each with its line, so a
Dockerfile is fixed in one pass.
"""

import io
import json
import re
from dataclasses import dataclass, field

from labkit.errors import BadImageInput, ImageError
from labkit.images.dockerfile_words import split_raw

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "ENTRYPOINT", "CMD",
             "LABEL", "SHELL", "STOPSIGNAL", "VOLUME")
NOT_SUPPORTED = {"HEALTHCHECK": "health checks are not run by labkit",
                 "ONBUILD": "triggers for later builds are not kept",
                 "MAINTAINER": "deprecated by Docker; use LABEL maintainer=..."}
FLAGS = {"FROM": (), "COPY": ("from", "chown", "chmod"), "ADD": ("chown", "chmod")}
FLAG = re.compile(r"--([a-z][a-z-]*)(?:=(\S*))?(?:\s+|$)")
ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HEREDOC = re.compile(r"(^|\s)<<-?['\"]?[A-Za-z_]")
URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^git@", re.I)
ESCAPE_DIRECTIVE = re.compile(r"^\s*#\s*escape\s*=\s*([\\`])\s*$", re.I)


@dataclass
class Instruction:
    line: int            # 1-based line number where the instruction starts
    keyword: str         # FROM, RUN, ...
    argument: str        # the text after the keyword, continuation lines joined, flags removed
    value: object = None  # the keyword's parsed form (see _PARSERS); words still unsubstituted
    flags: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        flags = "".join(f"--{name}={value} " for name, value in self.flags.items())
        return f"{self.keyword} {flags}{self.argument}"


@dataclass
class Stage:
    index: int
    base: str            # as written: substituted with the global ARGs when built
    name: str | None     # FROM ... AS name
    line: int
    steps: list = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: list    # ARG instructions before the first FROM
    stages: list
    escape: str = "\\"


def recipe_error(line: int, message: str) -> BadImageInput:
    """A recipe line that cannot be built: bad input (the CLI exits 125)."""
    return BadImageInput(f"recipe line {line}: {message}")


class _Problems(list):
    def add(self, line, message):
        self.append((line, message))


def parse_recipe(text: str) -> Dockerfile:
    from dockerfile_parse import DockerfileParser

    escape = _escape_of(text)
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False)
    problems = _Problems()
    global_args, stages = [], []
    for item in parser.structure:
        keyword, line = item["instruction"], item["startline"] + 1
        if keyword == "COMMENT":
            continue
        instruction = _instruction(keyword, line, item["value"], item["content"], problems, escape)
        if instruction is None:
            continue
        if instruction.keyword == "FROM":
            base, name = instruction.value
            stages.append(Stage(len(stages), base, name, line))
        elif not stages:
            if instruction.keyword == "ARG":
                global_args.append(instruction)
            else:
                problems.add(line, f"the first instruction must be FROM (an image to start from), not {keyword}")
        else:
            stages[-1].steps.append(instruction)
    if not stages and not problems:
        raise BadImageInput("the recipe is empty; it needs at least a FROM line")
    _check_stage_names(stages, problems)
    if problems:
        if len(problems) == 1:
            raise recipe_error(*problems[0])
        raise BadImageInput(f"the recipe has {len(problems)} lines labkit cannot build:\n"
                            + "\n".join(f"  line {line}: {message}" for line, message in problems))
    return Dockerfile(global_args, stages, escape)


def _escape_of(text: str) -> str:
    for raw in text.splitlines():
        match = ESCAPE_DIRECTIVE.match(raw)
        if match:
            return match.group(1)
        if not re.match(r"^\s*#\s*\w+\s*=", raw):
            break  # directives come only before anything else
    return "\\"


def _instruction(keyword, line, value, content, problems, escape):
    word = content.split(None, 1)[0] if content.strip() else keyword
    if keyword in NOT_SUPPORTED:
        problems.add(line, f"{keyword} is not supported by labkit builds: {NOT_SUPPORTED[keyword]}")
        return None
    if keyword not in SUPPORTED:
        problems.add(line, f"unknown instruction {word!r}; labkit builds understand {', '.join(SUPPORTED)}")
        return None
    value = (value or "").strip()
    if keyword in ("RUN", "COPY", "ADD") and HEREDOC.search(value):
        problems.add(line, f"here-documents (<<EOF) in {keyword} are not supported; write the file in the "
                           "build context and COPY it")
        return None
    flags, argument = _flags(value)
    allowed = FLAGS.get(keyword, ())
    unknown = [name for name in flags if name not in allowed]
    if unknown:
        problems.add(line, f"{keyword} option(s) {', '.join('--' + n for n in unknown)} are not supported"
                           + (f" (labkit takes {', '.join('--' + n for n in allowed)})" if allowed else ""))
        return None
    if not argument:
        problems.add(line, f"{keyword} needs an argument")
        return None
    try:
        parsed = _PARSERS[keyword](argument, escape)
    except (ImageError, ValueError) as error:
        problems.add(line, str(error))
        return None
    if keyword == "ADD":
        urls = [source for source in parsed["sources"] if URL.match(source)]
        if urls:
            problems.add(line, f"ADD {urls[0]}: labkit builds offline and fetches no URL or git repository; "
                               "download it into the build context and COPY or ADD the file")
            return None
    return Instruction(line, keyword, argument, parsed, flags)


def _flags(value: str) -> tuple:
    flags = {}
    while value.startswith("--"):
        match = FLAG.match(value)
        if not match:
            break
        flags[match.group(1)] = match.group(2) if match.group(2) is not None else "true"
        value = value[match.end():]
    return flags, value.strip()


def json_list(argument: str):
    """The exec (JSON) form, or None: like Docker, text that is not a JSON list of
    strings is the shell form."""
    if not argument.startswith("["):
        return None
    try:
        value = json.loads(argument)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value


def _parse_from(argument, escape):
    words = argument.split()
    if len(words) == 3 and words[1].upper() == "AS":
        if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.-]*", words[2]):
            raise ImageError(f"stage name {words[2]!r} must start with a letter and hold letters, digits, '_', '.', '-'")
        return words[0], words[2].lower()
    if len(words) != 1:
        raise ImageError("FROM takes an image and optionally AS NAME: FROM image [AS name]")
    return words[0], None


def _command(argument, escape):
    """("exec", [...]) or ("shell", text): the shell is the one SHELL set when built."""
    words = json_list(argument)
    return ("exec", words) if words is not None else ("shell", argument)


def _parse_run(argument, escape):
    kind, value = _command(argument, escape)
    if kind == "exec" and not value:
        raise ImageError("RUN's exec form needs at least the program: RUN [\"program\", \"arg\"]")
    return kind, value


def _parse_shell(argument, escape):
    words = json_list(argument)
    if not words:
        raise ImageError('SHELL takes the JSON form, e.g. SHELL ["/bin/sh", "-c"]')
    return words


def _parse_copy(argument, escape):
    words = json_list(argument)
    words = words if words is not None else split_raw(argument, escape)
    if len(words) < 2:
        raise ImageError("needs at least one source and a destination")
    return {"sources": words[:-1], "destination": words[-1]}


def _parse_pairs(keyword):
    def parse(argument, escape):
        words = split_raw(argument, escape)
        if keyword == "ENV" and words and "=" not in words[0]:
            name, _, rest = argument.partition(" ")
            if not rest.strip():
                raise ImageError(f"ENV {name} needs a value: ENV NAME=value")
            return [(name, rest.strip())]  # legacy form: ENV NAME value with spaces, one pair
        pairs = []
        for word in words:
            key, equals, value = word.partition("=")
            if not equals or not key:
                raise ImageError(f"{keyword} expects NAME=value pairs, got {word!r}")
            pairs.append((key, value))
        return pairs
    return parse


def _parse_arg(argument, escape):
    pairs = []
    for word in split_raw(argument, escape):
        name, equals, default = word.partition("=")
        if not ARG_NAME.fullmatch(name):
            raise ImageError(f"{name!r} is not a valid ARG name")
        pairs.append((name, default if equals else None))
    return pairs


def _parse_words(argument, escape):
    words = json_list(argument)
    return words if words is not None else split_raw(argument, escape)


def _parse_one(argument, escape):
    return argument


_PARSERS = {
    "FROM": _parse_from, "RUN": _parse_run, "CMD": _command, "ENTRYPOINT": _command, "SHELL": _parse_shell,
    "COPY": _parse_copy, "ADD": _parse_copy, "ENV": _parse_pairs("ENV"), "LABEL": _parse_pairs("LABEL"),
    "ARG": _parse_arg, "WORKDIR": _parse_one, "USER": _parse_one, "STOPSIGNAL": _parse_one,
    "EXPOSE": _parse_words, "VOLUME": _parse_words,
}


def _check_stage_names(stages, problems):
    seen = {}
    for stage in stages:
        if stage.name is None:
            continue
        if stage.name in seen:
            problems.add(stage.line, f"stage name {stage.name!r} is already used on line {seen[stage.name]}")
        seen[stage.name] = stage.line
