"""Words of a Dockerfile instruction, as Docker reads them: quotes, escapes and
variable substitution.

Docker's rules (https://docs.docker.com/reference/dockerfile/#environment-replacement,
implemented in BuildKit's frontend/dockerfile/shell/lex.go):

    $NAME  ${NAME}          the value, or "" when unset
    ${NAME:-word}           word when NAME is unset or empty; ${NAME-word}: only when unset
    ${NAME:+word}           word when NAME is set and not empty, else ""; ${NAME+word}: when set
    ${NAME:?message}        an error when unset or empty; ${NAME?message}: when unset
    \\$NAME                 a literal $NAME (the escape character is \\ or the `# escape=` one)
    'single quotes'         literal; "double quotes": substitution, \\" and \\$ escapes

Only some instructions substitute (ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL,
USER, VOLUME, WORKDIR, and ARG's default): RUN, CMD and ENTRYPOINT are left to the
shell that runs them, as in Docker.
"""

import re

from labkit.errors import ImageError

NAME_START = re.compile(r"[A-Za-z_]")
NAME_CHAR = re.compile(r"[A-Za-z0-9_]")


class SubstitutionError(ImageError):
    pass


class Words:
    """Reads `text` word by word (or as one word) under the variables `variables`."""

    def __init__(self, text: str, variables: dict, escape: str = "\\"):
        self.text = text
        self.variables = variables
        self.escape = escape
        self.position = 0

    # -- the public readings ---------------------------------------------------------

    def word(self) -> str:
        """The whole text as one word: quotes removed, variables substituted (WORKDIR, USER...)."""
        return "".join(self._read(split=False))

    def split(self) -> list:
        """Whitespace-separated words (outside quotes), each substituted (COPY sources, EXPOSE...)."""
        words = []
        while True:
            self._skip_space()
            if self._done():
                return words
            words.append("".join(self._read(split=True)))

    # -- the lexer ---------------------------------------------------------------------

    def _done(self) -> bool:
        return self.position >= len(self.text)

    def _peek(self, offset: int = 0) -> str:
        index = self.position + offset
        return self.text[index] if index < len(self.text) else ""

    def _next(self) -> str:
        char = self._peek()
        self.position += 1
        return char

    def _skip_space(self) -> None:
        while not self._done() and self._peek().isspace():
            self.position += 1

    def _read(self, split: bool):
        while not self._done():
            char = self._peek()
            if split and char.isspace():
                return
            self.position += 1
            if char == self.escape:
                if not self._done():
                    yield self._next()
            elif char == "'":
                yield self._single_quoted()
            elif char == '"':
                yield self._double_quoted()
            elif char == "$":
                yield self._dollar()
            else:
                yield char

    def _single_quoted(self) -> str:
        end = self.text.find("'", self.position)
        if end < 0:
            raise SubstitutionError(f"unexpected end of text: a single quote in {self.text!r} is not closed")
        value, self.position = self.text[self.position:end], end + 1
        return value

    def _double_quoted(self) -> str:
        parts = []
        while True:
            if self._done():
                raise SubstitutionError(f"unexpected end of text: a double quote in {self.text!r} is not closed")
            char = self._next()
            if char == '"':
                return "".join(parts)
            if char == self.escape and self._peek() in ('"', "$", self.escape):
                parts.append(self._next())
            elif char == "$":
                parts.append(self._dollar())
            else:
                parts.append(char)

    def _dollar(self) -> str:
        if self._peek() == "{":
            self.position += 1
            return self._braced()
        if not NAME_START.match(self._peek()):
            return "$"  # as Docker: a $ not followed by a name is itself
        return self.variables.get(self._name(), "")

    def _name(self) -> str:
        start = self.position
        while NAME_CHAR.match(self._peek()):
            self.position += 1
        return self.text[start:self.position]

    def _braced(self) -> str:
        name = self._name()
        if not name:
            raise SubstitutionError(f"bad substitution in {self.text!r}: '${{' must be followed by a name")
        if self._peek() == "}":
            self.position += 1
            return self.variables.get(name, "")
        operator = self._next()
        if operator == ":":
            operator += self._next()
        if operator not in (":-", "-", ":+", "+", ":?", "?"):
            raise SubstitutionError(f"unsupported modifier {operator!r} in ${{{name}...}} of {self.text!r}; "
                                    "Docker's are :- - :+ + :? ?")
        word = self._until_brace()
        is_set = name in self.variables
        value = self.variables.get(name, "")
        present = bool(value) if operator.startswith(":") else is_set
        if operator.endswith("-"):
            return value if present else word
        if operator.endswith("+"):
            return word if present else ""
        if not present:
            raise SubstitutionError(f"{name}: {word or 'is not set'}")
        return value

    def _until_brace(self) -> str:
        """The word inside ${NAME:-word}: itself substituted, up to the closing brace."""
        parts = []
        while True:
            if self._done():
                raise SubstitutionError(f"bad substitution in {self.text!r}: '${{' is not closed")
            char = self._next()
            if char == "}":
                return "".join(parts)
            if char == self.escape and not self._done():
                parts.append(self._next())
            elif char == "$":
                parts.append(self._dollar())
            elif char == "'":
                parts.append(self._single_quoted())
            elif char == '"':
                parts.append(self._double_quoted())
            else:
                parts.append(char)


def substitute(text: str, variables: dict, escape: str = "\\") -> str:
    return Words(text, variables, escape).word()


def split_words(text: str, variables: dict, escape: str = "\\") -> list:
    return Words(text, variables, escape).split()


def split_raw(text: str, escape: str = "\\") -> list:
    """Whitespace-separated words with their quotes and escapes kept (for NAME=value
    pairs, which are substituted one by one after the split, as Docker does)."""
    words, current, quote, index = [], [], None, 0
    while index < len(text):
        char = text[index]
        if char == escape and quote != "'" and index + 1 < len(text):
            current.append(text[index:index + 2])
            index += 2
            continue
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
            index += 1
            continue
        current.append(char)
        index += 1
    if quote:
        raise SubstitutionError(f"unexpected end of text: a {'single' if quote == chr(39) else 'double'} quote "
                                f"in {text!r} is not closed")
    if current:
        words.append("".join(current))
    return words
