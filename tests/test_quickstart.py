"""The README's main job runs the whole flow (teacher -> prune -> distil -> evaluate -> plots) end to end."""

import json

from compress import quickstart
from drsformer import DRSformer


def test_quickstart_runs_the_whole_flow(tmp_path, capsys):
    quickstart.main(["--out", str(tmp_path), "--teacher-steps", "2", "--student-steps", "2", "--rain100-images", "2"])
    runs = tmp_path / "results" / "runs"
    teacher = json.loads((runs / "teacher_tiny.json").read_text())
    student = json.loads((runs / "prune50_distill.json").read_text())
    assert teacher["role"] == "teacher" and student["role"] == "student"
    assert student["gmacs_256"] <= 0.5 * teacher["gmacs_256"]
    assert teacher["sets"]["builtin"]["images"] == 2
    assert (tmp_path / "results" / "pareto_gmacs_256_builtin.png").stat().st_size > 0
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "| teacher_tiny | teacher |" in summary and "prune50_distill" in summary
    # the student names its teacher by path (runs/teacher_tiny/final): the summary still pairs them per image
    assert "| prune50_distill | teacher_tiny | rain100L | 2 | 1/1 |" in summary
    assert (
        DRSformer.from_pretrained(tmp_path / "runs" / "prune50_distill" / "final").config
        == DRSformer.from_pretrained(tmp_path / "runs" / "prune50_distill" / "best").config
    )
    assert "quickstart done" in capsys.readouterr().out
