"""The package's import graph: no cycles, and dependencies point down the layers.

Every module of microgpt/ is parsed with `ast` and each import becomes an edge, wherever it
sits: at the top of the file or inside a function (a lazy import is still a dependency, it
only runs later). Relative imports are resolved against the importing module's package;
`from . import x` is an edge to the submodule x when x is one, else to the package. Importing
a submodule also runs its parent packages' __init__, as Python does, but that is not an edge
here: a package is only a dependency where a file names it.

The layers, bottom up, as README.md's "The design in a page" draws them:

    errors, fileio             the foundation: importable from anywhere, import nothing
    backends/                  the kernels
    tensor, ops, ops_fused ... autograd and the math of every op
    nn/                        layers and models
    data/, tokenizer/          text in, tokens out
    train/, inference/,        the loop, checkpoints, generation, and Hugging Face models in
    interop/                   and out (train/checkpoint.py writes through interop/)
    cli, __main__, microgpt    the command, and the package's front door (it serves names
                               of every layer)

A module may import its own layer or any lower one, never a higher one, and the graph has no
cycle. One allowance, stated in ALLOWED_LAZY: Tensor's operator sugar (x + y, x @ w, x.sum())
reaches up to ops.py, from inside a function of tensor.py, so that ops.py can import Tensor
at its top. Every other edge counts.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "microgpt"

LAYERS = [
    ("foundation", ["microgpt.errors", "microgpt.fileio"]),
    ("backends", ["microgpt.backends"]),
    ("tensor/ops", ["microgpt.tensor", "microgpt.op_registry", "microgpt.ops", "microgpt.ops_fused",
                    "microgpt.ops_moe", "microgpt.gradcheck"]),
    ("nn", ["microgpt.nn"]),
    ("data/tokenizer", ["microgpt.data", "microgpt.tokenizer"]),
    ("train/inference", ["microgpt.train", "microgpt.inference", "microgpt.interop", "microgpt.quantize"]),
    ("finetune", ["microgpt.finetune"]),          # SFT on the trainer, LoRA, chat
    ("eval", ["microgpt.eval"]),
    ("serve", ["microgpt.serve"]),                # the HTTP server over inference/
    ("cli", ["microgpt.cli", "microgpt.lifecycle", "microgpt.__main__", "microgpt"]),
]

# (importer, imported): edges that may exist only inside a function, and are left out of the
# cycle check. Exactly one: Tensor's operator sugar calls into ops.py.
ALLOWED_LAZY = {("microgpt.tensor", "microgpt.ops")}


def package_modules(root=ROOT):
    """{module name: path} for every .py file of the package (a package is its __init__)."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(root, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_package(path):
    return os.path.basename(path) == "__init__.py"


class _Imports(ast.NodeVisitor):
    """Collect (target, line, lazy) for every import of a module; lazy = inside a function."""

    def __init__(self, module, path, modules):
        self.module, self.modules = module, modules
        self.package = module if _is_package(path) else module.rpartition(".")[0]
        self.depth, self.found = 0, []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, name, node):
        # A name that is no .py file of the package is outside the graph: a third-party
        # module, or a compiled extension (tokenizer/_bpe, built by cffi), which imports nothing.
        found = (name, node.lineno, self.depth > 0)
        if name in self.modules and name != self.module and found not in self.found:
            self.found.append(found)

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module
        for alias in node.names:       # `from pkg import sub` imports the submodule sub
            submodule = f"{origin}.{alias.name}"
            self._add(submodule if submodule in self.modules else origin, node)


def import_edges(modules):
    """[(importer, imported, path, line, lazy)] over the whole package."""
    edges = []
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        visitor = _Imports(module, path, modules)
        visitor.visit(tree)
        edges.extend((module, target, path, line, lazy) for target, line, lazy in visitor.found)
    return edges


def find_cycles(graph):
    """One cycle (a list of modules, first == last) per strongly connected component (Tarjan):
    a component is a knot of modules that all reach each other; the cycle shown is the
    shortest through its first module, and the knot's other modules are named with it."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(component, graph) for component in sorted(components, key=min)]


def _cycle_in(component, graph):
    """A shortest path from the component's first module back to itself, inside it (BFS)."""
    start = min(component)
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]       # path[::-1] begins at start
                if w in component and w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError("internal: a strongly connected component without a cycle")


def layer_of(module):
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != PACKAGE and module.startswith(prefix + ".")):
                return rank
    return None


def _where(edge):
    importer, imported, path, line, lazy = edge
    kind = "inside a function" if lazy else "top level"
    return f"{importer} -> {imported}  ({os.path.relpath(path, ROOT)}:{line}, {kind})"


def _knot_of(module, graph):
    """The modules that both reach `module` and are reached from it."""
    def reach(start, edges):
        seen, todo = {start}, [start]
        while todo:
            for w in edges.get(todo.pop(), ()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen
    reverse = {}
    for v, targets in graph.items():
        for w in targets:
            reverse.setdefault(w, set()).add(v)
    return reach(module, graph) & reach(module, reverse)


def _counted(edges):
    return [e for e in edges if (e[0], e[1]) not in ALLOWED_LAZY]


def describe_cycles(edges):
    graph = {}
    for importer, imported, *_ in _counted(edges):
        graph.setdefault(importer, set()).add(imported)
    lines = []
    for cycle in find_cycles(graph):
        knot = _knot_of(cycle[0], graph)
        rest = sorted(knot - set(cycle))
        lines.append("cycle: " + " -> ".join(cycle) + (f"  (in a knot with {', '.join(rest)})" if rest else ""))
        for a, b in zip(cycle, cycle[1:]):
            lines.extend("    " + _where(e) for e in _counted(edges) if (e[0], e[1]) == (a, b))
    return lines


# --- the tests ---------------------------------------------------------------------------------

def test_the_package_has_no_import_cycle():
    problems = describe_cycles(import_edges(package_modules()))
    assert not problems, "import cycles (dependencies must point one way):\n" + "\n".join(problems)


def test_the_one_allowance_is_lazy_and_still_needed():
    edges = import_edges(package_modules())
    for importer, imported in ALLOWED_LAZY:
        uses = [e for e in edges if (e[0], e[1]) == (importer, imported)]
        assert uses, f"{importer} no longer imports {imported}: remove the allowance"
        eager = [_where(e) for e in uses if not e[4]]
        assert not eager, "the allowance covers imports inside a function only:\n" + "\n".join(eager)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in package_modules() if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS in this file): {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = [_where(e) for e in _counted(import_edges(package_modules()))
              if layer_of(e[1]) is not None and layer_of(e[0]) is not None and layer_of(e[1]) > layer_of(e[0])]
    assert not upward, ("imports of a higher layer (" + " < ".join(name for name, _ in LAYERS) + "):\n"
                        + "\n".join(upward))


# --- the checker itself, on a made-up package ------------------------------------------------------

def _write(root, files):
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def test_the_checker_sees_relative_absolute_and_lazy_imports(tmp_path):
    _write(str(tmp_path), {
        "microgpt/__init__.py": "",
        "microgpt/a.py": "from . import b\n",                         # relative, a submodule
        "microgpt/b.py": "def f():\n    from .sub.c import name\n",  # lazy, a name of a module
        "microgpt/sub/__init__.py": "",
        "microgpt/sub/c.py": "import microgpt.a as a\nimport numpy\n",  # absolute; outside ignored
        "microgpt/sub/d.py": "from .. import errors\nfrom . import c\n",
        "microgpt/errors.py": "",
    })
    modules = package_modules(str(tmp_path))
    assert set(modules) == {"microgpt", "microgpt.a", "microgpt.b", "microgpt.sub", "microgpt.sub.c",
                            "microgpt.sub.d", "microgpt.errors"}
    edges = {(e[0], e[1], e[4]) for e in import_edges(modules)}
    assert edges == {("microgpt.a", "microgpt.b", False), ("microgpt.b", "microgpt.sub.c", True),
                     ("microgpt.sub.c", "microgpt.a", False), ("microgpt.sub.d", "microgpt.errors", False),
                     ("microgpt.sub.d", "microgpt.sub.c", False)}
    problems = describe_cycles(import_edges(modules))
    assert problems[0] == "cycle: microgpt.a -> microgpt.b -> microgpt.sub.c -> microgpt.a"
    assert any("b.py:2, inside a function" in line for line in problems)


def test_find_cycles_reports_each_knot_once():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": {"e"}, "f": {"a"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "a"], ["c", "d", "c"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}}) == []
