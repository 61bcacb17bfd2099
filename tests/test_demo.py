"""``vitslim demo``: the shipped teacher compressed end to end (here with a short schedule), the table's
numbers, the student file, and the demo list."""

from __future__ import annotations

import json

import pytest

import vitslim
from vitslim.testbed import get_testbed

from .test_cli import one_error_line, run


def test_demo_list_names_the_demos_and_their_teachers(capsys):
    code, out, err = run(["demo", "--list", "--json"], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"digits-vit", "shapes-sam", "shapes-sam2"} <= set(rows)
    assert rows["digits-vit"]["teacher_ships"] and rows["digits-vit"]["fraction"] == 0.01


def test_demo_compresses_the_shipped_teacher_and_writes_the_student(tmp_path, capsys, monkeypatch):
    tb = get_testbed("digits-vit")
    monkeypatch.setattr(type(tb), "demo", {**tb.demo, "options": {"min_steps": 40}, "runs": 2})  # seconds, not minutes
    code, out, err = run(["demo", "digits-vit", "--out", tmp_path, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert "forecast: about" in err
    assert result["images"] == {"train": 11, "val": 1}  # 1% of the 1200 training images
    teacher, student = result["metrics"]["teacher"], result["metrics"]["student"]
    assert teacher["accuracy"] == pytest.approx(tb.shipped_entry()["metrics"]["accuracy"], abs=0.2)
    assert 10 < student["accuracy"] <= 100 and "top1_agreement" in student
    assert result["sizes"]["student"]["params"] < 0.4 * result["sizes"]["teacher"]["params"]
    assert result["latency"]["teacher_ms"] > 0 and result["latency"]["student_ms"] > 0
    slim = vitslim.load(result["student_file"])
    assert tb.score(slim)["accuracy"] == pytest.approx(student["accuracy"])


def test_an_unknown_demo_is_one_line(capsys):
    code, _, err = run(["demo", "imagenet"], capsys)
    assert code == 2 and "unknown demo 'imagenet'" in one_error_line(err)
