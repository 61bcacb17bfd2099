"""Plugin discovery: the built-in families arrive through the `vitslim` entry-point group."""

import json
from importlib.metadata import entry_points

from vitslim.cli import main
from vitslim.registry import families, importances


def test_builtin_families_come_from_entry_points(capsys):
    eps = {ep.name: ep.value for ep in entry_points(group="vitslim")}
    assert eps == {"sam": "vitslim_sam", "timm": "vitslim_timm", "sam2": "vitslim_sam2", "sam3": "vitslim_sam3"}
    assert {f.name for f in families()} == {"sam", "timm", "sam2", "sam3"}
    main(["plugins", "--json"])
    rows = {r["plugin"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sam"]["families"] == {"sam": ["sam-b", "sam-l", "sam-h"]}
    assert rows["sam"]["package"].startswith("vitslim ")  # loaded from the distribution's entry point
    assert rows["timm"]["families"]["timm"][0] == "timm:<model>"
    assert rows["sam2"]["families"] == {"sam2": ["sam2-t", "sam2-s", "sam2-b+", "sam2-l"]}
    assert rows["sam2"]["testbeds"] == ["shapes-sam2"]
    assert rows["sam3"]["families"] == {"sam3": ["sam3"]}
    assert set(rows["vitslim.criteria"]["importances"]) == {"disturbed_taylor", "taylor", "magnitude", "random"}
    assert rows["sam"]["testbeds"] == ["shapes-sam"] and rows["timm"]["testbeds"] == ["digits-vit", "digits-vit12"]
    assert set(importances()) >= {"disturbed_taylor", "magnitude"}


def test_sam2_names_without_the_sam2_package_say_how_to_install_it(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # as if sam2 were not installed
    try:
        main(["inspect", "sam2-b+"])
    except SystemExit as exc:
        assert exc.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "SAM2_BUILD_CUDA=0 pip install --no-build-isolation" in err


def test_core_imports_no_family_package():
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "vitslim"
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("segment_anything", "sam2", "sam3", "transformers", "timm", "vitslim_")), \
                    f"{path}: {name}"


def test_core_never_tests_a_family_name():
    """No core module decides by a model or family name (``spec.startswith("sam")``, ``== "timm"``): such
    questions are family methods."""
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "vitslim"

    def family_literal(node) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and any(
            word in node.value.lower() for word in ("sam", "timm", "vit_", "deit"))

    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                operands += [e for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set)) for e in o.elts]
                assert not any(family_literal(o) for o in operands), f"{path}:{node.lineno}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "startswith", "endswith", "get"):
                args = [*node.args, *(e for a in node.args if isinstance(a, ast.Tuple) for e in a.elts)]
                assert not any(family_literal(a) for a in args), f"{path}:{node.lineno}"
