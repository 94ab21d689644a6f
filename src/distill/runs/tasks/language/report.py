"""How a language-model run's report reads beyond the generic one: with a routed teacher,
each model's perplexity on each member's test rows, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.runs.report.tables import COLORS, model_rows


def domain_figures(run_dir: Path, summary: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """Grouped bars: for each domain of a routed teacher (``teacher_rows``), the
    perplexity of every model on that member's test rows (none without routing)."""
    domains = list(summary.get("teacher_rows") or {})
    models = summary["models"]
    rows = [
        (key, label)
        for key, label, _ in model_rows(summary)
        if any(f"perplexity_{d}" in models[key] for d in domains)
    ]
    if not domains or not rows:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(domains), 3.8))
    width = 0.8 / len(rows)
    for i, (key, label) in enumerate(rows):
        values = [models[key].get(f"perplexity_{d}", float("nan")) for d in domains]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(domains))]
        ax.bar(xs, values, width, label=label, color=COLORS.get(key))
    ax.set_xticks(range(len(domains)), [f"{d}\n({summary['teacher_rows'][d]} train rows)"
                                        for d in domains])  # fmt: skip
    ax.set(ylabel="test perplexity (lower is better)", title="each member's test rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / "plots" / "domains.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    caption = "Test perplexity on each member's rows (a routed teacher's domains)"
    return {"domains": (out, caption)}
