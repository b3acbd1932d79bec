"""The package's layers: ``flow`` and ``quantize`` sit below ``index`` and
``losses``; ``losses`` may import ``quantize`` and ``flow``; ``quantize`` imports neither
``index`` nor ``losses``; ``index`` uses only public names of ``quantize``. Checked on the
source (every import, at any depth, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qkernels

ROOT = Path(qkernels.__file__).parent
# package -> the sibling packages it must not import
FORBIDDEN = {
    "flow": {"index", "losses", "quantize"},
    "quantize": {"index", "losses"},
    "index": {"losses"},
    "losses": {"index"},
}


def _modules(package: str, root: Path = ROOT):
    return sorted((root / package).glob("*.py"))


def _imports(path: Path, root: Path = ROOT):
    """(module imported, names imported from it) for every import in the file, relative
    imports resolved against the file's package."""
    package = ["qkernels", *path.parent.relative_to(root).parts]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            yield module, [alias.name for alias in node.names]


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "qkernels" else None


def _layer_violations(package: str, root: Path = ROOT) -> list[str]:
    found = []
    for path in _modules(package, root):
        for module, names in _imports(path, root):
            targets = {_package_of(module)}
            if module == "qkernels":  # from .. import quantize
                targets |= set(names)
            if targets & FORBIDDEN[package]:
                found.append(f"{path.relative_to(root)} imports {module} {names}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_imports_against_the_layers(package):
    found = _layer_violations(package)
    assert not found, found


def test_index_uses_public_names_of_quantize_only():
    found = []
    for path in _modules("index"):
        for module, names in _imports(path):
            if _package_of(module) != "quantize":
                continue
            private = [n for n in [*module.split(".")[2:], *names] if n.startswith("_")]
            if private:
                found.append(f"{path.relative_to(ROOT)} imports {module} {names}")
        for node in ast.walk(ast.parse(path.read_text())):
            # pq._x, self.pq._x, ProductQuantizer._x
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name in ("pq", "ProductQuantizer", "quantizer"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {name}.{node.attr}")
    assert not found, found


def test_the_check_sees_a_violation(tmp_path):
    """The layer check is not vacuous: a module importing what it must not is reported."""
    (tmp_path / "quantize").mkdir()
    (tmp_path / "quantize" / "probe.py").write_text(
        "import numpy\nfrom ..index.binary import pack_bits\n"
        "def f():\n    from .. import losses\n")
    found = [m for m, _ in _imports(tmp_path / "quantize" / "probe.py", tmp_path)]
    assert found == ["numpy", "qkernels.index.binary", "qkernels"]
    assert len(_layer_violations("quantize", tmp_path)) == 2


# ------------------------------------------------------------------ private names across modules

def _private_uses(path: Path) -> list[str]:
    """Where ``path`` reaches into another module's private names: ``x._name`` on anything
    but ``self``, ``cls`` or a class defined in the file, and imports of private modules or
    names of another package module."""
    tree = ast.parse(path.read_text())
    local = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            name = getattr(owner, "id", None)
            if name in ("self", "cls") or name in local:
                continue
            found.append(f"{path.name}:{node.lineno} uses .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            parts = node.module.split(".")
            if (node.level or parts[0] == "qkernels") and any(
                    p.startswith("_") for p in parts):
                found.append(f"{path.name}:{node.lineno} imports {node.module}")
            for alias in node.names:
                if (alias.name.startswith("_") and not alias.name.startswith("__")
                        and (node.level or parts[0] == "qkernels")):
                    found.append(f"{path.name}:{node.lineno} imports {alias.name}")
    return found


# the modules that must use qkernels through its public names: sharded search (beside the
# array and input helpers every entry point shares) and the training commands
PUBLIC_ONLY = [ROOT / "distributed.py", *sorted((ROOT.parent / "training").glob("*.py"))]
SHARED_HELPERS = {"distributed.py imports _arrays", "distributed.py imports _checks"}


@pytest.mark.parametrize("path", PUBLIC_ONLY, ids=[p.name for p in PUBLIC_ONLY])
def test_no_private_names_across_modules(path):
    found = [f for f in _private_uses(path)
             if not any(f.startswith(h.split(" imports ")[0]) and f.endswith(
                 h.split(" imports ")[1]) for h in SHARED_HELPERS)]
    assert not found, found


def test_the_private_name_check_sees_a_violation(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from qkernels.index import _table_cpu\n"
                     "class Mine:\n    def f(self, table):\n"
                     "        return self._x, Mine._y, table._table\n")
    assert _private_uses(probe) == ["probe.py:1 imports _table_cpu", "probe.py:4 uses ._table"]
