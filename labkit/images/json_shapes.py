"""The shapes an image's JSON files must have, checked where they are read: a manifest
or config is someone else's file, and `[1]` where an object belongs, or `5` where a list
of strings does, crashed an import with a Python traceback instead of one line naming
the file and the field."""

import contextlib

from labkit.errors import BadImageInput


def _describe(value) -> str:
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} ({shown[:40]}{'…' if len(shown) > 40 else ''})"


def _refuse(source: str, what: str, value, expected: str):
    raise BadImageInput(f"{source}: {what} is {_describe(value)}, not {expected}; it is not an image labkit can read")


def mapping(value, source: str, what: str, optional: bool = False) -> dict:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        _refuse(source, what, value, "an object")
    return value


def array(value, source: str, what: str, optional: bool = False) -> list:
    if value is None and optional:
        return []
    if not isinstance(value, list):
        _refuse(source, what, value, "a list")
    return value


def mappings(value, source: str, what: str, optional: bool = False) -> list:
    items = array(value, source, what, optional)
    for index, item in enumerate(items):
        mapping(item, source, f"{what}[{index}]")
    return items


def strings(value, source: str, what: str, optional: bool = False) -> list | None:
    """A list of strings; None stays None where optional (Cmd unset is not Cmd [])."""
    if value is None and optional:
        return None
    items = array(value, source, what)
    for index, item in enumerate(items):
        string(item, source, f"{what}[{index}]")
    return items


def string(value, source: str, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        _refuse(source, what, value, "a string")
    return value


@contextlib.contextmanager
def reading(source: str, name: str):
    """A backstop for a shape no check above foresaw: what Python raises on a value of the
    wrong type, while `name` is read, becomes one line naming the file."""
    try:
        yield
    except BadImageInput:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as error:
        raise BadImageInput(f"{source}: {name} is not shaped as labkit expects ({type(error).__name__}: {error}); "
                            "it is not an image labkit can read") from None
