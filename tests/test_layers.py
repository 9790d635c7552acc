"""Lower layers never import higher ones. Top to bottom: zoo.cli (the command line, on top of
everything though it lives in the zoo package), parity, runtimes, exporters, then the zoo
package's own layers: registry, families, models, infra, contract, errors.

Two checks of the same rule: an AST scan of every import statement here (lazy ones inside
functions included), and import-linter's contracts from pyproject.toml (``lint-imports``), which
also keep the families independent of each other and the generic layers away from them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bottom to top; a module belongs to the layer of its longest prefix
ORDER = [
    "zoo.errors",
    "zoo.contract",
    "zoo.infra",
    "zoo.models",
    "zoo.families",
    "zoo.registry",
    "exporters",
    "runtimes",
    "parity",
    "zoo.cli",
]
PACKAGES = ("zoo", "exporters", "runtimes", "parity")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    found = [i for i, layer in enumerate(ORDER) if module == layer or module.startswith(layer + ".")]
    return max(found, key=lambda i: len(ORDER[i])) if found else None


def _imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (``from a import b``: ``a`` and ``a.b``,
    as ``b`` may be a module); relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def _files() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def test_every_module_is_in_a_layer():
    """A new folder of zoo/ is placed in the layers (here and in pyproject.toml), not left out."""
    outside = [_module_name(p) for p in _files() if _layer(_module_name(p)) is None and _module_name(p) != "zoo"]
    assert not outside, outside


def test_no_upward_imports():
    offenders = []
    for path in _files():
        own = _layer(_module_name(path))
        if own is None:  # zoo/__init__.py: re-exports zoo.errors only (checked by import-linter as a whole)
            continue
        higher = {ORDER[i] for i in (_layer(m) for m in _imports(path)) if i is not None and i > own}
        if higher:
            offenders.append(f"{path.relative_to(ROOT)} ({ORDER[own]}) imports {', '.join(sorted(higher))}")
    assert not offenders, offenders


def test_families_are_independent():
    """No family imports another (what they share is in zoo.models, zoo.infra or zoo.contract)."""
    offenders = []
    for path in sorted((ROOT / "zoo" / "families").rglob("*.py")):
        parts = _module_name(path).split(".")
        if len(parts) < 3:
            continue
        others = {".".join(m.split(".")[:3]) for m in _imports(path) if m.startswith("zoo.families.")}
        others -= {".".join(parts[:3])}
        if others:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(others))}")
    assert not offenders, offenders


def test_import_linter_layers_match_this_order():
    """pyproject.toml's layers contract states the same order as :data:`ORDER`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the test extra installs tomli
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    assert layers == ORDER[::-1]


def test_import_linter_contracts_are_kept():
    """``lint-imports``' contracts (layers, independent families, families only through the
    registry): a broken one fails the suite, with import-linter's report. In a subprocess: import-linter
    configures logging with ``disable_existing_loggers``, which in process silenced the loggers of the
    modules already imported (and the tests that read their warnings)."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
         "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout


def test_generic_layers_have_no_family_branches():
    """Exporters, runtimes and parity never name a family: a family is a declaration."""
    families = re.compile(r"\b(pixart|transformer[-_]temporal|animatediff|unianimate|wan)\b", re.IGNORECASE)
    offenders = []
    for package in ("exporters", "runtimes", "parity"):
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in families.findall(path.read_text())]
    assert not offenders, offenders
