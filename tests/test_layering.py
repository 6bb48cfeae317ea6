"""The package's one-way dependencies, enforced by parsing every import (README "Layout").

geometry, io and nn know nothing of the rest; models build on nn; weights on models; align and eval
consume arrays (geometry only, never models, infer or weights); infer sits on models, io and weights;
the CLI sits on top and nothing imports it. Tests and the package never import `experiments/`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "f3d_jax"

# subpackage -> the other subpackages it may import ("*" = any)
ALLOWED: dict[str, set[str]] = {
    "nn": set(),
    "geometry": set(),
    "io": set(),
    "models": {"nn"},
    "weights": {"models", "nn", "io"},
    "eval": {"geometry"},
    "align": {"geometry", "eval"},
    "matching": set(),
    "sparse": {"geometry", "matching", "align", "eval"},
    "infer": {"io", "models", "nn", "weights", "geometry"},
    "export": {"io", "geometry", "align", "eval"},
    "viewer": {"io", "export"},
    "train": {"nn", "models", "weights", "geometry", "eval", "io", "infer"},
    "cli": {"*"},
}
_MODULE_STRING = re.compile(r"f3d_jax(\.\w+)+")


def _imported_modules(source: str) -> set[str]:
    """Every f3d_jax / experiments module a file names: import statements, and module-path strings
    (importlib.import_module("f3d_jax.x")), docstrings excepted."""
    tree = ast.parse(source)
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "f3d_jax":  # `from f3d_jax import geometry` names the subpackages
                found.update(f"f3d_jax.{a.name}" for a in node.names if a.name in ALLOWED)
                found.update("f3d_jax" for a in node.names if a.name not in ALLOWED)
            else:
                found.add(node.module)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and _MODULE_STRING.fullmatch(node.value)):
            found.add(node.value)
    return {m for m in found if m.split(".")[0] in ("f3d_jax", "experiments")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "f3d_jax" and len(parts) > 1 and parts[1] in ALLOWED else None


def _violations(layer: str | None, modules: set[str]) -> list[str]:
    bad = []
    for m in sorted(modules):
        if m.split(".")[0] == "experiments":
            bad.append(f"imports {m} (experiments/ is not part of the package)")
            continue
        dst = _layer(m)
        if dst == "cli" and layer != "cli":
            bad.append(f"imports the CLI ({m})")
        elif layer is None:  # the top-level f3d_jax/__init__.py: lazy strings only, checked below
            continue
        elif dst is not None and dst != layer and "*" not in ALLOWED[layer] and dst not in ALLOWED[layer]:
            bad.append(f"{layer} imports {m}")
        elif dst is None and m == "f3d_jax" and "*" not in ALLOWED[layer]:
            bad.append(f"{layer} imports the top-level package (reach into the layer you need)")
    return bad


def test_every_subpackage_has_a_rule():
    subpackages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(ALLOWED), "add the new subpackage to ALLOWED (and to the README's layout)"


def test_package_imports_point_one_way():
    problems = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG)
        layer = rel.parts[0] if len(rel.parts) > 1 else None
        for v in _violations(layer, _imported_modules(f.read_text())):
            problems.append(f"f3d_jax/{rel}: {v}")
    assert not problems, "\n".join(problems)


def test_tests_and_tools_never_import_experiments():
    problems = []
    for root in ("tests", "tools"):
        for f in sorted((REPO / root).rglob("*.py")):
            for m in _imported_modules(f.read_text()):
                if m.split(".")[0] == "experiments":
                    problems.append(f"{f.relative_to(REPO)} imports {m}")
    assert not problems, "\n".join(problems)


def test_top_level_lazy_names_point_into_the_package():
    import f3d_jax

    for name, module in f3d_jax._LAZY.items():
        assert _layer(module) not in (None, "cli"), f"f3d_jax.{name} -> {module}"


@pytest.mark.parametrize("layer, source, bad", [
    ("geometry", "from f3d_jax.models.model import Model", True),
    ("geometry", "import f3d_jax.infer.engine as e", True),
    ("align", "x = importlib.import_module('f3d_jax.weights.loading')", True),
    ("align", "from f3d_jax import geometry", False),
    ("align", "from f3d_jax.geometry.transforms import make_pose", False),
    ("infer", "from f3d_jax.cli.main import main", True),
    ("models", "from experiments.synthetic import make_scene", True),
    ("models", '"""Mentions f3d_jax.infer.engine in a docstring."""', False),
    ("cli", "from f3d_jax.infer import inference", False),
])
def test_the_checker_itself(layer, source, bad):
    assert bool(_violations(layer, _imported_modules(source))) is bad
