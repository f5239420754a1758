"""The package's shape, read from its source: no import circles, and the layers point one
way (runtime → images, net → primitives; never back up).

Every import counts, also one inside a function: a lazy import is still a dependency,
only a later one.
"""

import ast
from pathlib import Path

import labkit

PACKAGE = Path(labkit.__file__).parent
# Lower layers that must never import the runtime above them.
BELOW_THE_RUNTIME = ("labkit.images", "labkit.net", "labkit.cgroups", "labkit.linux")
# A package's cli.py is a front end (a `labkit` subcommand plugin), above the runtime
# like the magics: it may hand the runtime's answers (a build's RUN runner, the layers
# containers use) to its package. Nothing in the package may import it back.
FRONT_ENDS = ("labkit.images.cli", "labkit.net.cli")
# Known and named, to be removed. Anything not listed here fails the tests below.
KNOWN_CIRCLES = []
KNOWN_UPWARD = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict) -> set:
    """The labkit modules that `name` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]   # `import labkit.net.hooks as h` names a module
            if target and target != name and target.startswith("labkit"):
                found.add(target)
    return found


def import_graph() -> dict:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component, graph) -> str:
    members = set(component)
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a] & members))


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "labkit" / "demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from labkit.demo import b\n")
    (package / "b.py").write_text("from . import a\n")
    modules = {module_name_in(tmp_path, p): p for p in sorted(package.rglob("*.py"))}
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph["labkit.demo.a"] == {"labkit.demo.b"}
    assert graph["labkit.demo.b"] == {"labkit.demo.a"}
    assert circles(graph) == [["labkit.demo.a", "labkit.demo.b"]]


def module_name_in(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50, "the walker found too few modules to mean anything"
    found = [component for component in circles(graph) if component not in KNOWN_CIRCLES]
    assert found == [], "import circles: " + " | ".join(describe(component, graph) for component in found)


def test_images_net_cgroups_and_linux_never_import_the_runtime():
    upward = sorted(f"{name} -> {target}" for name, targets in import_graph().items()
                    if name.startswith(BELOW_THE_RUNTIME) and name not in FRONT_ENDS
                    for target in targets if target == "labkit.runtime" or target.startswith("labkit.runtime."))
    upward = [edge for edge in upward if edge not in KNOWN_UPWARD]
    assert upward == [], "imports from a lower layer up into labkit.runtime: " + ", ".join(upward)


def test_nothing_imports_a_front_end_of_its_own_package():
    """images/cli.py may import the runtime only because nothing below the runtime
    imports it (other front ends, such as %image reading its verb table, may)."""
    graph = import_graph()
    back = sorted(f"{name} -> {target}" for name, targets in graph.items()
                  if name.startswith(BELOW_THE_RUNTIME) and name not in FRONT_ENDS
                  for target in targets if target in FRONT_ENDS)
    assert back == [], "a module below the runtime imports a front end: " + ", ".join(back)


def is_sys_modules(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "modules" \
        and isinstance(node.value, ast.Name) and node.value.id == "sys"


def sys_modules_lookups(source: str) -> list:
    """The labkit module names a source looks up as sys.modules[...] or sys.modules.get(...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and is_sys_modules(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and is_sys_modules(node.func.value) and node.args:
            key = node.args[0]
        else:
            continue
        if isinstance(key, ast.Constant) and str(key.value).startswith("labkit"):
            found.append(key.value)
    return found


def test_the_sys_modules_check_sees_both_spellings():
    source = 'import sys\na = sys.modules.get("labkit.runtime.client.container")\nb = sys.modules["labkit.net"]\n' \
             'c = sys.modules.get("ipykernel")\n'
    assert sys_modules_lookups(source) == ["labkit.runtime.client.container", "labkit.net"]


def test_no_module_reaches_another_through_sys_modules():
    """`sys.modules.get("labkit.x")` is an import the walker cannot see: a dependency
    hidden from the checks above."""
    hidden = [f"{name}: {target}" for name, path in package_modules().items()
              for target in sys_modules_lookups(path.read_text())]
    assert hidden == [], "modules looked up in sys.modules: " + ", ".join(hidden)
