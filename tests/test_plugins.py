"""Plugin discovery: the built-in families arrive through the `vitslim` entry-point group."""

import json
from importlib.metadata import entry_points

from vitslim.cli import main
from vitslim.registry import families, importances


def test_builtin_families_come_from_entry_points(capsys):
    eps = {ep.name: ep.value for ep in entry_points(group="vitslim")}
    assert eps == {"sam": "vitslim_sam", "timm": "vitslim_timm"}
    assert {f.name for f in families()} == {"sam", "timm"}
    main(["plugins", "--json"])
    rows = {r["plugin"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sam"]["families"] == {"sam": ["sam-b", "sam-l", "sam-h"]}
    assert rows["sam"]["package"].startswith("vitslim ")  # loaded from the distribution's entry point
    assert rows["timm"]["families"] == {"timm": ["timm:<model>"]}
    assert set(rows["vitslim.criteria"]["importances"]) == {"disturbed_taylor", "taylor", "magnitude", "random"}
    assert set(importances()) >= {"disturbed_taylor", "magnitude"}


def test_core_imports_no_family_package():
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "vitslim"
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("segment_anything", "timm", "vitslim_")), f"{path}: {name}"
