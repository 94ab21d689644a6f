"""The pictures and pages a person looks at: tick labels that do not overlap and read as
plain numbers, a diffusion report with the stylesheet every report has, and sample grids
large enough to see. Checked on the rendered figures (label bounding boxes), not by eye."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pytest
import torch
from PIL import Image

from distill.runs.report.document import accuracy_vs_parameters
from distill.runs.report.page import STYLE
from distill.runs.report.ticks import round_ticks
from distill.runs.tasks.diffusion.report import fid_figure, write_diffusion_report
from distill.runs.tasks.diffusion.scoring import image_grid


def tick_labels(fig):
    """Every visible tick label of every axes, drawn: (text, bounding box)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)
            view = sorted(axis.get_view_interval())
            for label in labels:
                x, y = label.get_position()
                where = x if axis is ax.xaxis else y
                if label.get_text() and label.get_visible() and view[0] <= where <= view[1]:
                    found.append((label.get_text(), label.get_window_extent(renderer)))
    return found


def assert_readable(fig):
    labels = tick_labels(fig)
    assert len(labels) >= 2
    for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
        assert not box_a.overlaps(box_b), f"tick labels {a!r} and {b!r} overlap"
    for text, _ in labels:  # plain numbers, not 1.425 × 10^3 or mathtext
        assert "×" not in text and "$" not in text and "^" not in text, text
    plt.close(fig)


def demo_summary(sizes=(421_738, 50_890, 50_890), accuracies=(0.9176, 0.8154, 0.8706)):
    keys = ("teacher", "baseline", "student")
    models = {k: {"parameters": p, "accuracy": a} for k, p, a in zip(keys, sizes, accuracies,
                                                                     strict=True)}  # fmt: skip
    return {"models": models}


@pytest.mark.parametrize(
    "sizes", [(421_738, 50_890, 50_890), (98_000, 71_000, 71_000), (2_000_000, 12_000, 12_000)]
)
def test_the_accuracy_against_size_plot_labels_its_log_axis_readably(sizes):
    assert_readable(accuracy_vs_parameters(demo_summary(sizes)))


def fid_summary(fids):
    steps = [8, 4, 2, 1][: len(fids)]
    teacher = {"sampler_steps": steps[0], "fid": fids[0], "ddim": {}}
    models = {"teacher": teacher}
    for i, (s, f) in enumerate(zip(steps[1:], fids[1:], strict=True)):
        models["student" if i == len(fids) - 2 else f"round_{s}"] = {"sampler_steps": s, "fid": f}
    return {"models": models, "method": "progressive"}


@pytest.mark.parametrize("fids", [(1450.0, 1437.5, 1425.0), (3.0, 40.0, 900.0, 2500.0)])
def test_the_fid_plot_labels_its_log_axes_readably(fids):
    fig = fid_figure(fid_summary(fids))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "4", "8"][
        4 - len(fids) :
    ]
    assert_readable(fig)


def test_round_ticks_are_round_numbers_inside_the_data():
    assert round_ticks([50_890, 421_738]) == [50_000, 100_000, 200_000, 500_000]
    assert round_ticks([1425, 1450]) == [1420, 1430, 1440, 1450]


def test_the_diffusion_report_has_the_stylesheet_and_grids_a_person_can_see(tmp_path):
    images = torch.rand(20, 1, 32, 32) * 2 - 1
    grid = image_grid(images, 10, tmp_path / "samples.png")
    with Image.open(grid) as picture:
        assert picture.size[0] >= 900  # 10 columns of 32-pixel images, each pixel 3×3
        assert picture.size[0] % (10 * 34) == 0
    summary = {**fid_summary((1450.0, 1437.5, 1425.0)), "name": "tiny", "teacher_model": "t",
               "dataset": "digits", "regime": "all labels"}  # fmt: skip
    for m in summary["models"].values():
        m.update(accuracy=0.5, seconds_per_image=0.01, parameters=10, train_seconds=1.0)
    write_diffusion_report(tmp_path, summary)
    page = (tmp_path / "report.html").read_text()
    assert f"<style>{STYLE}</style>" in page
    assert 'class="pixels"' in page  # shown at the page's width, not blurred


@pytest.mark.e2e
def test_without_plots_a_report_has_its_tables_and_says_why_it_has_no_pictures(classifier_run):
    """The suite's runs write no plots ($DISTILL_PLOTS=0, tests/conftest.py)."""
    run_dir, _, summary = classifier_run
    assert not (run_dir / "plots").exists()
    report = (run_dir / "report.md").read_text()
    assert "No plots: $DISTILL_PLOTS is 0." in report and "![" not in report
    assert f"{100 * summary['models']['student']['accuracy']:.2f}" in report
    assert "<img" not in (run_dir / "report.html").read_text()
