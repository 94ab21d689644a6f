"""Log-scale axes a person can read: a few round numbers inside the data's range, written
plainly, and no minor labels. Matplotlib's defaults label minor ticks on a log axis that
spans less than a decade, which crowds them ("70k80k90k100k") or writes them as
"1.425 × 10^3"."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib.ticker as ticker
from matplotlib.axis import Axis


def plain(value: float) -> str:
    return f"{value:g}"


def count(value: float) -> str:
    """``50k``, ``1.5M``: a parameter count on an axis."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value >= 1e3 else f"{value:g}"


def round_ticks(values: Sequence[float]) -> list[float]:
    """Round numbers spanning ``values`` (positive): 1, 2, 5 × 10^k where they span a
    factor of 3 or more (only the powers of ten where those would be more than six), else
    evenly spaced round numbers; at least two (one for a single value)."""
    low, high = min(values), max(values)
    if high <= low * (1 + 1e-9):  # one value
        return [float(low)]

    def inside(candidates: list[float]) -> list[float]:
        return [t for t in candidates if low / 1.2 <= t <= high * 1.2 and t > 0]

    if high / low >= 3:
        decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        ticks = inside([m * 10.0**e for e in decades for m in (1, 2, 5)])
        if len(ticks) > 6:
            ticks = inside([10.0**e for e in decades])
    else:
        locator = ticker.MaxNLocator(nbins=4, steps=[1, 2, 5, 10])
        ticks = inside([float(t) for t in locator.tick_values(low, high)])
    return ticks if len(ticks) >= 2 else sorted({float(low), float(high)})


def readable_log_axis(
    axis: Axis,
    values: Sequence[float],
    form: Callable[[float], str] = plain,
    ticks: Sequence[float] | None = None,
) -> None:
    """Label log-scale ``axis`` at ``ticks`` (default: ``round_ticks`` of the plotted
    ``values``), each written by ``form``; no minor tick labels."""
    axis.set_major_locator(ticker.FixedLocator(list(ticks or round_ticks(values))))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: form(value)))
    axis.set_minor_locator(ticker.NullLocator())
