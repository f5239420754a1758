"""The package's shape, read from its source: no import circles, the layers point one
way (runtime → images, net → primitives; never back up), and the runtime's code keeps
to the process it runs in.

Every import counts, also one inside a function (a lazy import is still a dependency,
only a later one) and one made with `importlib.import_module` (a literal name, an
f-string's literal start joined with a string of the same file, or a name the file holds
as a string, as the lazy-export tables do); a call the walker cannot follow fails
`test_every_import_module_call_can_be_followed`.

**The process rule.** labkit.runtime's code runs in four processes, each started by the
one before it, and is laid out so:

    client      the caller (a Jupyter kernel, the `labkit` command); also the package's
                public face, `labkit.runtime` itself
      └─starts→ helper      (exec of `python -m labkit.runtime.helper`, or a fork of the caller)
         └─forks→ supervisor   (one per exec, and per container where the helper cannot fork
                                PID 1 itself: runtime/helper/first_process.py; whose code,
                                `start_alone`, PID 1 then runs first)
            └─forks→ inside      (the container's first process, until exec)

Data that crosses between them (spec, plan, protocol, lifecycle, the container's
directory, a step's failure) lives in shared modules at the top of labkit.runtime.
A module in a process's package may import its own package, the shared modules, and the
package of the process it starts, whose first lines run in a fork of it; never a
process further down (the client never imports what runs in a supervisor or inside a
container) and never one above it (nothing inside imports the client or the helper).
A shared module imports no process's package. The rest of labkit reaches the runtime
through the client and the shared modules only. And through any chain of imports (a
helper module → labkit.security → ...), no process's code reaches the code of a process
above it, nor a shared module the code of any process. No exceptions are listed.
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
RUNTIME = "labkit.runtime"
# Each starts the next: the order of the process rule (see the docstring).
PROCESSES = ("client", "helper", "supervisor", "inside")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict) -> set:
    """The labkit modules that `name` imports, anywhere in the file (import_module calls too)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    found = set(dynamic_imports(tree, modules)[0])
    for node in ast.walk(tree):
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
            if target and target.startswith("labkit"):
                found.add(target)
    found.discard(name)
    return found


def is_import_module_call(node) -> bool:
    """importlib.import_module(...), import_module(...) or __import__(...)."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    function = node.func
    if isinstance(function, ast.Attribute):
        return function.attr == "import_module" and isinstance(function.value, ast.Name) \
            and function.value.id == "importlib"
    return isinstance(function, ast.Name) and function.id in ("import_module", "__import__")


def dynamic_imports(tree, modules: dict) -> tuple:
    """(the labkit modules a file's import_module calls can load, the calls it cannot follow).

    A literal names its module. An f-string's literal start (`f"labkit.experiments.{name}"`)
    is joined with each string of the file that makes a module's name. Any other argument
    (`_EXPORTS[name]`) can load each labkit.* module the file names in a string. A call none of
    these resolves is returned, by line, as not followed."""
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    found, unfollowed = set(), []
    for node in ast.walk(tree):
        if not is_import_module_call(node):
            continue
        argument = node.args[0]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            targets = {argument.value} & set(modules) if argument.value.startswith("labkit") else {None}
        elif isinstance(argument, ast.JoinedStr):
            start = ""
            for part in argument.values:
                if not isinstance(part, ast.Constant):
                    break
                start += part.value
            targets = {start + text for text in strings} & set(modules) if start else set()
        else:
            targets = {text for text in strings if text.startswith("labkit.")} & set(modules)
        targets.discard(None)   # a module outside labkit (`importlib.import_module("json")`)
        if targets or (isinstance(argument, ast.Constant) and not str(argument.value).startswith("labkit")):
            found |= targets
        else:
            unfollowed.append(node.lineno)
    return found, unfollowed


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


# --- import_module calls ------------------------------------------------------------------

def demo_package(tmp_path, files: dict) -> dict:
    """The import graph of a throwaway labkit.demo package made of `files`."""
    package = tmp_path / "labkit" / "demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(files.pop("__init__.py", ""))
    for name, text in files.items():
        (package / name).write_text(text)
    modules = {module_name_in(tmp_path, p): p for p in sorted(package.rglob("*.py"))}
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_a_circle_through_import_module_is_seen_in_each_spelling(tmp_path):
    graph = demo_package(tmp_path, {
        "__init__.py": 'import importlib\n_EXPORTS = {"Thing": "labkit.demo.lazy"}\n'
                       'def __getattr__(name):\n    return getattr(importlib.import_module(_EXPORTS[name]), name)\n',
        "lazy.py": "from labkit.demo import table\n",
        "table.py": 'from importlib import import_module\nNAMES = ("plugin",)\n'
                    'def get(name):\n    return import_module(f"labkit.demo.{name}")\n',
        "plugin.py": 'import importlib\ndef back():\n    return importlib.import_module("labkit.demo")\n',
    })
    assert graph["labkit.demo"] == {"labkit.demo.lazy"}
    assert graph["labkit.demo.table"] == {"labkit.demo.plugin"}
    assert graph["labkit.demo.plugin"] == {"labkit.demo"}
    assert circles(graph) == [["labkit.demo", "labkit.demo.lazy", "labkit.demo.plugin", "labkit.demo.table"]]


def test_an_import_module_call_the_walker_cannot_follow_is_named():
    source = 'import importlib\ndef load(name):\n    return importlib.import_module(name)\n' \
             'json = importlib.import_module("json")\n'
    assert dynamic_imports(ast.parse(source), package_modules()) == (set(), [3])


def test_every_import_module_call_can_be_followed():
    modules = package_modules()
    unfollowed = [f"{name}:{line}" for name, path in modules.items()
                  for line in dynamic_imports(ast.parse(path.read_text()), modules)[1]]
    assert unfollowed == [], "import_module calls whose module the structure tests cannot tell: " + ", ".join(unfollowed)


# --- the process rule (see the module's docstring) ----------------------------------------

def process_of(module: str) -> str | None:
    """client, helper, supervisor or inside; "shared" for the runtime's other modules;
    None outside the runtime. `labkit.runtime` itself is the client's public face."""
    if module == RUNTIME:
        return "client"
    if not module.startswith(RUNTIME + "."):
        return None
    package = module.split(".")[2]
    return package if package in PROCESSES else "shared"


def process_rule_breaches(graph: dict) -> list:
    breaches = []
    for name, targets in sorted(graph.items()):
        here = process_of(name)
        for target in sorted(targets):
            there = process_of(target)
            if there not in PROCESSES:
                continue   # a shared module or outside the runtime: any process may use it
            if here is None:
                allowed = there == "client"
            elif here == "shared":
                allowed = False
            else:
                allowed = PROCESSES.index(there) - PROCESSES.index(here) in (0, 1)
            if not allowed:
                breaches.append(f"{name} ({here or 'outside the runtime'}) -> {target} ({there})")
    return breaches


def test_the_process_rule_names_every_kind_of_breach():
    """A synthetic graph: each allowed edge passes, each kind of breach is named."""
    allowed = {
        "labkit.runtime.client.container": {"labkit.runtime.plan", "labkit.runtime.client.streams"},
        "labkit.runtime.client.helper_client": {"labkit.runtime.helper.zygote"},   # it forks the helper
        "labkit.runtime.helper.zygote": {"labkit.runtime.supervisor.supervise", "labkit.runtime.protocol"},
        "labkit.runtime.supervisor.supervise": {"labkit.runtime.inside.recipe"},
        "labkit.runtime.inside.recipe": {"labkit.runtime.step_failure", "labkit.linux.syscalls"},
        "labkit.runtime": {"labkit.runtime.client.container"},
        "labkit.magics.container": {"labkit.runtime", "labkit.runtime.client.container", "labkit.runtime.spec"},
    }
    assert process_rule_breaches(allowed) == []
    breaches = {
        "labkit.runtime.client.container": {"labkit.runtime.inside.recipe", "labkit.runtime.supervisor.exec"},
        "labkit.runtime.inside.recipe": {"labkit.runtime.client.result", "labkit.runtime.supervisor.supervise"},
        "labkit.runtime.helper.zygote": {"labkit.runtime.client.state", "labkit.runtime.inside.mounts"},
        "labkit.runtime.supervisor.exec": {"labkit.runtime.helper.ready_slots"},
        "labkit.runtime.plan": {"labkit.runtime.helper.zygote"},
        "labkit.runtime.spec": {"labkit.runtime"},
        "labkit.experiments.escapes": {"labkit.runtime.inside.mounts"},
    }
    assert process_rule_breaches(breaches) == [
        "labkit.experiments.escapes (outside the runtime) -> labkit.runtime.inside.mounts (inside)",
        "labkit.runtime.client.container (client) -> labkit.runtime.inside.recipe (inside)",
        "labkit.runtime.client.container (client) -> labkit.runtime.supervisor.exec (supervisor)",
        "labkit.runtime.helper.zygote (helper) -> labkit.runtime.client.state (client)",
        "labkit.runtime.helper.zygote (helper) -> labkit.runtime.inside.mounts (inside)",
        "labkit.runtime.inside.recipe (inside) -> labkit.runtime.client.result (client)",
        "labkit.runtime.inside.recipe (inside) -> labkit.runtime.supervisor.supervise (supervisor)",
        "labkit.runtime.plan (shared) -> labkit.runtime.helper.zygote (helper)",
        "labkit.runtime.spec (shared) -> labkit.runtime (client)",
        "labkit.runtime.supervisor.exec (supervisor) -> labkit.runtime.helper.ready_slots (helper)",
    ]


def test_the_runtime_keeps_each_line_in_the_process_it_runs_in():
    graph = import_graph()
    packages = {process_of(name) for name in graph if name.startswith(RUNTIME + ".")}
    assert packages == set(PROCESSES) | {"shared"}, "the runtime is not laid out by process"
    assert process_rule_breaches(graph) == []


def reached(graph: dict, name: str) -> set:
    """Every module `name` imports, directly or through others."""
    found, todo = set(), [name]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in found:
                found.add(target)
                todo.append(target)
    return found


def upward_chains(graph: dict) -> list:
    """Runtime modules that reach, through any chain, a process above their own (or, for a
    shared module, any process's code)."""
    found = []
    for name in sorted(graph):
        here = process_of(name)
        if here not in PROCESSES and here != "shared":
            continue
        rank = PROCESSES.index(here) if here in PROCESSES else -1
        above = sorted(target for target in reached(graph, name) if process_of(target) in PROCESSES
                       and (here == "shared" or PROCESSES.index(process_of(target)) < rank))
        if above:
            found.append(f"{name} ({here}) reaches {', '.join(above)}")
    return found


def test_a_chain_through_another_package_up_to_the_client_is_named():
    graph = {
        "labkit.runtime.helper.zygote": {"labkit.security.compiled"},
        "labkit.security.compiled": {"labkit.runtime.client.state"},   # allowed on its own: outside → client
        "labkit.runtime.inside.recipe": {"labkit.net.inside"},
        "labkit.runtime.plan": {"labkit.security.compiled"},
    }
    assert process_rule_breaches(graph) == []
    assert upward_chains(graph) == [
        "labkit.runtime.helper.zygote (helper) reaches labkit.runtime.client.state",
        "labkit.runtime.plan (shared) reaches labkit.runtime.client.state",
    ]


def test_no_process_reaches_the_code_of_one_above_it():
    assert upward_chains(import_graph()) == []
