"""A grade cell's source read as data, so that the grader can judge it itself.

The student's kernel can rebind `check`, `expect`, the probes, `sum` or the display of a
Report, so `labkit grade run` never counts what a check cell displays. It reads the cell's
source as the instructor wrote it (restored from the source notebook by grade_id) and
accepts one shape only:

    check("title", expect("what should hold", POINTS, probes.NAME(ARG, ...), hint="...", id="..."), ...)

where every ARG is a literal (a string, a number, True/False/None, a tuple or list of
those) or `Answer("variable")`. Nothing else is evaluated: no names, no calls but these.
"""

import ast
from dataclasses import dataclass, field

from labkit.grading.notebook import BEGIN_HIDDEN, END_HIDDEN, FormatError


@dataclass(frozen=True)
class AnswerRef:
    """`Answer("variable")` in a check cell: the grader asks the kernel for its value."""
    name: str


@dataclass
class ProbeCall:
    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass
class ExpectCall:
    name: str
    points: float
    probe: ProbeCall
    hint: str = ""
    id: str = ""


@dataclass
class CheckCall:
    title: str
    expectations: list


def parse_check(source: str, where: str = "grade cell", probe_names=None) -> CheckCall:
    """The check cell's call, as data; FormatError (naming the cell and line) otherwise.
    `probe_names`: the probes the grader knows (None: any name)."""
    try:
        tree = ast.parse(_without_markers(source))
    except SyntaxError as error:
        raise FormatError(f"{where}: line {error.lineno}: not Python: {error.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        raise FormatError(f"{where}: a grade cell must be one check(...) call and nothing else")
    call = tree.body[0].value
    if not _is_call_of(call, "check"):
        raise FormatError(f"{where}: line {call.lineno}: a grade cell must be one check(...) call")
    if call.keywords or not call.args:
        raise FormatError(f"{where}: check() takes a title, then expect(...) calls, and no keywords")
    title = _string(call.args[0], where, "the check's title")
    expectations = [_expectation(node, where, probe_names) for node in call.args[1:]]
    return CheckCall(title, expectations)


def _without_markers(source: str) -> str:
    # The markers are comments already; hidden tests stay in (the grader judges them too).
    return "\n".join(line for line in source.split("\n")
                     if BEGIN_HIDDEN not in line and END_HIDDEN not in line)


def _is_call_of(node, name) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _fail(node, where, what):
    raise FormatError(f"{where}: line {getattr(node, 'lineno', '?')}: {what}")


def _string(node, where, what) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    _fail(node, where, f"{what} must be a string literal")


def _number(node, where, what) -> float:
    value = _literal(node, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        _fail(node, where, f"{what} must be a number, zero or more")
    return float(value)


def _expectation(node, where, probe_names) -> ExpectCall:
    if not _is_call_of(node, "expect"):
        _fail(node, where, "each argument after the title must be an expect(...) call")
    if len(node.args) != 3:
        _fail(node, where, "expect() takes a name, points and a probe, then hint= and id=")
    keywords = {}
    for keyword in node.keywords:
        if keyword.arg not in ("hint", "id"):
            _fail(node, where, f"expect() takes hint= and id=, not {keyword.arg}=")
        keywords[keyword.arg] = _string(keyword.value, where, f"expect()'s {keyword.arg}")
    name = _string(node.args[0], where, "an expectation's name")
    points = _number(node.args[1], where, f"the points of {name!r}")
    return ExpectCall(name, points, _probe(node.args[2], where, probe_names), **keywords)


def _probe(node, where, probe_names) -> ProbeCall:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "probes"):
        _fail(node, where, "a probe must be probes.NAME(...)")
    name = node.func.attr
    if probe_names is not None and name not in probe_names:
        _fail(node, where, f"probes.{name} is not a probe the grader knows")
    args = tuple(_literal(arg, where) for arg in node.args)
    kwargs = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            _fail(node, where, "no **arguments in a probe call")
        kwargs[keyword.arg] = _literal(keyword.value, where)
    return ProbeCall(name, args, kwargs)


def _literal(node, where):
    if _is_call_of(node, "Answer"):
        if len(node.args) != 1 or node.keywords:
            _fail(node, where, "Answer() takes the name of one variable")
        name = _string(node.args[0], where, "Answer()'s variable")
        if not name.isidentifier():
            _fail(node, where, f"Answer({name!r}): not a variable name")
        return AnswerRef(name)
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(item, where) for item in node.elts)
    try:
        return ast.literal_eval(node)
    except ValueError:
        _fail(node, where, "a probe's arguments must be literals (names, numbers, strings) or Answer(\"variable\")")


def parse_answer(text: str):
    """A value the kernel sent as its repr, read as a literal; a path's repr
    (PosixPath('/x')) reads as its string. ValueError for anything else."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"not a literal: {text[:80]!r}") from None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("PosixPath", "Path", "PurePosixPath") and len(node.args) == 1 and not node.keywords
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.args[0].value
    return ast.literal_eval(node)
