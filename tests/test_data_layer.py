"""The data layer's boundaries: no printing or exit codes, no upward imports, a cheap
package import, and writes that survive a power loss."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import edue.data
import edue.io

SRC = Path(edue.io.__file__).resolve().parent
DATA_MODULES = sorted((SRC / "data").glob("*.py"))
LAYER_MODULES = [*DATA_MODULES, SRC / "io.py"]
# layers above data (data → nets → methods → prediction → metrics → engine → report → cli)
ABOVE_DATA = (
    "edue.nets",
    "edue.methods",
    "edue.losses",
    "edue.prediction",
    "edue.metrics",
    "edue.engine",
    "edue.report",
    "edue.cli",
    "edue.demo",
    "edue.demo3d",
)
EXIT_CALLS = {"exit", "quit", "sys.exit", "os._exit"}


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC.parent)}:{getattr(node, 'lineno', '?')}"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(path: Path, tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Absolute names of every module imported anywhere in the file (lazy ones too)."""
    package = ["edue", *path.relative_to(SRC).parent.parts]
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((name, node))
            found += [(f"{name}.{alias.name}", node) for alias in node.names]
    return found


def test_the_layer_modules_are_found() -> None:
    names = {p.name for p in DATA_MODULES}
    assert {"__init__.py", "case.py", "check.py", "riga_extract.py", "splits.py"} <= names


@pytest.mark.parametrize("path", LAYER_MODULES, ids=lambda p: p.name)
def test_no_printing_or_exit_codes(path: Path) -> None:
    offences = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "print":
                offences.append(f"{_where(path, node)}: print(...)")
            elif name in EXIT_CALLS:
                offences.append(f"{_where(path, node)}: {name}(...)")
        elif isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if _dotted(raised) == "SystemExit":
                offences.append(f"{_where(path, node)}: raise SystemExit")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            doc = (ast.get_docstring(node) or "").lower()
            if node.name.endswith("_command") or node.name == "main":
                offences.append(f"{_where(path, node)}: command function {node.name}()")
            elif "exit status" in doc or "exit code" in doc:
                offences.append(f"{_where(path, node)}: {node.name}() returns an exit code")
    assert not offences, "printing and exit codes belong in edue/cli/:\n" + "\n".join(offences)


@pytest.mark.parametrize("path", LAYER_MODULES, ids=lambda p: p.name)
def test_no_imports_from_the_layers_above(path: Path) -> None:
    forbidden = ABOVE_DATA + (("edue.data",) if path.name == "io.py" else ())
    offences = [
        f"{_where(path, node)}: imports {name}"
        for name, node in _imported_modules(path, _tree(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert not offences, "the data layer may only import downwards:\n" + "\n".join(offences)


@pytest.mark.parametrize("name", ["registry.py", "source.py", "splits.py"])
def test_generic_modules_know_no_reader(name: str) -> None:
    path = SRC / "data" / name
    readers = ("riga", "riga_extract", "hecktor", "hecktor_layout", "lidc", "qubiq", "folder")
    offences = [
        f"{_where(path, node)}: imports {module}"
        for module, node in _imported_modules(path, _tree(path))
        if any(module == f"edue.data.{r}" or module.startswith(f"edue.data.{r}.") for r in readers)
    ]
    assert not offences, "\n".join(offences)


def test_import_scanner_catches_lazy_and_relative_imports() -> None:
    module = SRC / "data" / "probe.py"  # never written: only its place in the package counts
    tree = ast.parse(
        "def f():\n    from edue.engine import train\n    from ..metrics import ood\n"
        "    import edue.report.html\n"
    )
    names = {name for name, _ in _imported_modules(module, tree)}
    assert {"edue.engine", "edue.metrics", "edue.metrics.ood", "edue.report.html"} <= names


def test_package_lists_its_public_names_and_imports_cheaply() -> None:
    assert edue.data.__all__ == sorted(edue.data._WHERE)
    for name in edue.data.__all__:
        assert getattr(edue.data, name) is not None, name
    assert set(edue.data.__all__) <= set(dir(edue.data))
    with pytest.raises(AttributeError):
        edue.data.not_a_name  # noqa: B018
    code = (
        "import sys, edue.data\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'scipy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_atomic_path_fsyncs_the_folder_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "out.json"
    synced: list[tuple[bool, int, bool]] = []  # (is a folder, inode, target in place)
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(edue.io.os, "fsync", spy)
    edue.io.write_json(target, {"a": 1})
    folder_syncs = [s for s in synced if s[0]]
    assert folder_syncs, "atomic_path never fsynced the folder"
    assert folder_syncs[-1][1] == os.stat(target.parent).st_ino
    assert folder_syncs[-1][2], "the folder was fsynced before the rename"
    assert synced[0][0] is False  # the file itself is fsynced first


def test_fsync_dir_ignores_what_it_cannot_open(tmp_path: Path) -> None:
    edue.io.fsync_dir(tmp_path / "missing")  # no error
    edue.io.fsync_dir(tmp_path)


@pytest.mark.parametrize("compress", [True, False])
def test_npz_round_trips_stored_or_deflated(tmp_path: Path, compress: bool) -> None:
    import zipfile

    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"members": rng.random((3, 2, 16, 16), dtype=np.float32), "sv": np.arange(2.0)}
    path = tmp_path / "a.npz"
    edue.io.write_npz(path, compress=compress, **arrays)
    with np.load(path) as loaded:
        assert set(loaded.files) == set(arrays)
        assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())
    kinds = {info.compress_type for info in zipfile.ZipFile(path).infolist()}
    assert kinds == {zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED}
