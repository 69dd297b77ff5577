"""The architecture's import fence: Megatron/TE only in actor/, SGLang only in rollout/."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "recast_mcore"
FENCE = {
    "megatron": "actor",
    "transformer_engine": "actor",
    "apex": "actor",
    "sglang": "rollout",
    "sgl_kernel": "rollout",
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_import_fence():
    violations = []
    for path in PKG.rglob("*.py"):
        part = path.relative_to(PKG).parts[0]
        for root in _imported_roots(path) & FENCE.keys():
            if part != FENCE[root]:
                violations.append(f"{path.relative_to(PKG.parent)} imports {root} (only recast_mcore/{FENCE[root]}/ may)")
    assert not violations, "\n".join(violations)


def test_fence_detects_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom megatron.core import parallel_state\n")
    assert "megatron" in _imported_roots(bad)
