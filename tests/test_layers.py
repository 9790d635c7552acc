"""Lower layers never import higher ones: zoo <- exporters <- runtimes <- parity (cli on top)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["zoo", "exporters", "runtimes", "parity"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ORDER)
def test_no_upward_imports(package):
    higher = set(ORDER[ORDER.index(package) + 1 :])
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name == "cli.py" and package == "zoo":
            continue  # the command line sits on top and imports lazily
        bad = _imports(path) & higher
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert not offenders, offenders


def test_generic_layers_have_no_family_branches():
    """Exporters, runtimes and parity never name a family: a family is a declaration."""
    families = re.compile(r"\b(pixart|transformer[-_]temporal|animatediff|unianimate|wan)\b", re.IGNORECASE)
    offenders = []
    for package in ("exporters", "runtimes", "parity"):
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in families.findall(path.read_text())]
    assert not offenders, offenders
