"""Layers only point down: data → nets → methods → config → prediction → metrics → engine →
report → cli, and no modules import each other in a cycle. Checked on the sources' import
statements (lazy imports inside functions included; imports under ``if TYPE_CHECKING:``
are annotations only and exempt)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "edue"

#: the layer of each top-level module or package of edue; a module may import its own
#: layer and those below it
RANK = {
    "_version": 0,
    "errors": 0,
    "variance": 0,
    "io": 0,
    "outputs": 0,
    "result_keys": 0,
    "data": 1,
    "nets": 2,
    "losses": 3,
    "methods": 3,
    "config": 4,
    "prediction": 5,
    "metrics": 6,
    "engine": 7,
    "report": 8,
    "demo": 9,
    "demo3d": 9,
    "study": 9,
    "launcher": 9,
    "cli": 9,
    "__main__": 9,
    "": 9,  # the package root: load(), lazy attributes
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, module)`` of every import outside ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend(
                (node.lineno, f"{node.module}.{a.name}" if node.module == "edue" else node.module)
                for a in node.names
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {_layer(_module_name(p)) for p in MODULES} <= set(RANK)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    me = _layer(_module_name(path))
    upward = [
        f"{path.relative_to(SRC)}:{line} imports {module}"
        for line, module in _runtime_imports(ast.parse(path.read_text()))
        if module.startswith("edue") and RANK[_layer(module)] > RANK[me]
    ]
    assert upward == []


def _target(module: str) -> str:
    """The module an import statement loads: ``edue.a.b`` when ``edue/a/b.py`` (or the
    package ``edue/a/b/``) exists, else its parent (a name imported from a module)."""
    parts = module.split(".")
    while parts:
        path = SRC.parent.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts)
        parts = parts[:-1]
    return module


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        me = _module_name(path)
        graph[me] = {
            _target(module)
            for _, module in _runtime_imports(ast.parse(path.read_text()))
            if module.startswith("edue.") and _target(module) != me
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No two modules import each other, directly or through others (lazy imports inside
    functions included): the data flow reads top to bottom."""
    assert _cycles(_import_graph()) == []


#: the engine's jobs in data-flow order: a job may import its own and earlier ranks
ENGINE_RANK = {"": 0, "training": 1, "inference": 1, "referral": 2, "predict": 3, "evaluation": 3}


def _engine_job(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[2] in ENGINE_RANK else ""


def test_the_engine_s_jobs_read_top_to_bottom():
    """Training and inference stand on the shared modules only; referral on inference;
    file prediction and evaluation on both: no job reaches back up."""
    assert {p.name for p in (SRC / "engine").iterdir() if p.is_dir() and p.name[0] != "_"} == (
        set(ENGINE_RANK) - {""}
    )
    upward = [
        f"{path.relative_to(SRC)}:{line} imports {module}"
        for path in (SRC / "engine").rglob("*.py")
        for line, module in _runtime_imports(ast.parse(path.read_text()))
        if module.startswith("edue.engine.")
        and ENGINE_RANK[_engine_job(_target(module))] > ENGINE_RANK[_engine_job(_module_name(path))]
    ]
    assert upward == []


def test_engine_never_imports_report():
    offenders = [
        f"{p.relative_to(SRC)}:{line}"
        for p in (SRC / "engine").rglob("*.py")
        for line, module in _runtime_imports(ast.parse(p.read_text()))
        if module.startswith("edue.report")
    ]
    assert offenders == []


@pytest.mark.parametrize("package", ["data", "nets", "methods", "metrics", "engine", "report"])
def test_packages_state_their_public_names(package):
    import importlib

    module = importlib.import_module(f"edue.{package}")
    public = getattr(module, "__all__", None)
    assert public, f"edue.{package} has no __all__"
    missing = [name for name in public if not hasattr(module, name)]
    assert missing == []


def test_only_the_command_line_prints_or_exits():
    allowed = {"demo.py", "__main__.py"}
    offenders = []
    for path in MODULES:
        if (path.name in allowed and path.parent == SRC) or path.parent == SRC / "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("print", "sys.exit", "exit", "quit"):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {name}()")
    assert offenders == []
