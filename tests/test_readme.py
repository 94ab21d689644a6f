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
