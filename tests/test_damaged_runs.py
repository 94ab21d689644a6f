"""Nothing read silently: every command that reads a finished run's student checks its
files against the SHA-256 that ``finished.json`` recorded, and names a damaged one."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from distill import cli
from distill.errors import CheckpointError
from distill.recipes import ModelSpec
from distill.runs.tasks.classify.data import prepare_data
from distill.runs.tasks.classify.models import model_from_spec


def damage(path, start=2000, end=2100):
    """Flip the bytes ``start``..``end`` of ``path`` (inside its tensors, not the header)."""
    raw = bytearray(path.read_bytes())
    assert len(raw) > end
    raw[start:end] = bytes(b ^ 0xFF for b in raw[start:end])
    path.write_bytes(bytes(raw))


@pytest.fixture
def damaged_run(classifier_run, tmp_path):
    run_dir, recipe, _ = classifier_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damage(copy / "student.safetensors")
    return copy, recipe


@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [["eval"], ["export"], ["push", "{tmp}/pushed"]],
    ids=["eval", "export", "push"],
)
def test_a_command_refuses_a_damaged_student_and_names_the_file(damaged_run, tmp_path, command):
    run_dir, _ = damaged_run
    name, *rest = command
    args = [name, str(run_dir), *(a.format(tmp=tmp_path) for a in rest)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert f"{run_dir / 'student.safetensors'}: differs from the SHA-256" in result.output
    assert "finished.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "pushed").exists()  # nothing copied
    assert not (run_dir / "export").exists()  # nothing written


@pytest.mark.e2e
def test_a_run_that_starts_from_a_damaged_student_is_refused(damaged_run):
    run_dir, recipe = damaged_run
    with pytest.raises(CheckpointError, match=r"student\.safetensors: differs"):
        model_from_spec(ModelSpec(model=str(run_dir)), prepare_data(recipe))


@pytest.mark.e2e
def test_an_unfinished_student_is_not_read(damaged_run):
    run_dir, _ = damaged_run
    (run_dir / "finished.json").unlink()
    result = CliRunner().invoke(cli.app, ["eval", str(run_dir)])
    assert result.exit_code == 2 and "did not finish" in result.output
