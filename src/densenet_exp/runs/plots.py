"""The pictures: learning curves as mean +- std bands, accuracy against cost, the comparison."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .configs import Configuration

COSTS = {
    "macs": ("macs_per_image", 1e-9, "GMACs per image (multiply-adds, torch FlopCounterMode / 2)"),
    "img_per_s": ("img_per_s", 1.0, "training img/s"),
}
VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(config: Configuration) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Epochs, mean and std of val top-1 over the configuration's runs at each epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in config.runs:
        for row in run.history:
            if "val_top1" in row:
                # counted as metrics.jsonl counts them: the first epoch is 0
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row["val_top1"]))
    if not by_epoch:
        return None
    epochs = np.array(sorted(by_epoch))
    values = [np.array(by_epoch[e]) for e in epochs]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return epochs, mean, std


def pareto_front(points: list[tuple[float, float]], cost_lower_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both accuracy and cost, by cost."""
    front = []
    for i, (ci, ai) in enumerate(points):
        dominated = False
        for j, (cj, aj) in enumerate(points):
            if j == i:
                continue
            cheaper = cj <= ci if cost_lower_is_better else cj >= ci
            strictly = cj < ci if cost_lower_is_better else cj > ci
            if cheaper and aj >= ai and (strictly or aj > ai):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def summary_plot(configs: list[Configuration], path: Path, cost: str = "macs") -> None:
    """``summary_figure`` written to ``path``."""
    plt = _pyplot()
    fig = summary_figure(configs, cost)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_figure(configs: list[Configuration], cost: str = "macs") -> Any:
    """Left: val top-1 per epoch (from 0, as metrics.jsonl counts), mean line and +-std band per
    configuration. Right: final val top-1 (mean, 95% CI bars) against the chosen cost, the Pareto
    front ringed, the baseline drawn as a star; configurations named in a legend beside it, since
    configurations of the same cost (conv=dsconv with any activation) share an x and their
    labels, written beside the points, fell on top of each other."""
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; valid choices: {', '.join(COSTS)}")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    points = []
    for n, config in enumerate(configs):
        colour = colours[n % len(colours)]
        _curve_band(left, config, colour)
        point = _cost_point(right, config, colour, cost)
        if point is not None:
            points.append(point)
    if points:
        # ringed and joined: no other configuration is both cheaper and more accurate
        front = pareto_front(points, cost_lower_is_better=cost == "macs")
        right.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            "--o",
            color="grey",
            lw=1,
            markersize=16,
            markerfacecolor="none",
            label="Pareto front",
        )
        right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    left.set(
        xlabel="epoch (from 0, as in metrics.jsonl)",
        ylabel="val top-1",
        title="validation top-1: mean ± std over seeds",
    )
    right.set(
        xlabel=COSTS[cost][2], ylabel="final val top-1", title="accuracy (mean, 95% CI) vs cost"
    )
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if any(_curve(c) is not None for c in configs):
        left.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _label(config: Configuration) -> str:
    return config.label + (" (baseline)" if config.baseline else "")


def _curve_band(ax: Any, config: Configuration, colour: str) -> None:
    curve = _curve(config)
    if curve is None:
        return
    epochs, mean, std = curve
    width = 2.2 if config.baseline else 1.4
    ax.plot(epochs, mean, color=colour, lw=width, label=_label(config))
    ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15)


def _cost_point(
    ax: Any, config: Configuration, colour: str, cost: str
) -> tuple[float, float] | None:
    """The configuration's (cost, mean final top-1) with its CI bar; None without both."""
    key, scale, _ = COSTS[cost]
    iv, x = config.spread("final_val_top1"), config.cost(key)
    if x is None or math.isnan(iv.mean):
        return None
    x *= scale
    ax.errorbar(
        x,
        iv.mean,
        yerr=[[iv.mean - iv.low], [iv.high - iv.mean]],
        fmt="*" if config.baseline else "o",
        markersize=14 if config.baseline else 6,
        color=colour,
        capsize=3,
        label=f"{_label(config)} (n={iv.n})",
    )
    return x, iv.mean


def compare_plot(comparisons: list[Any], path: Path) -> None:
    """Each configuration's difference to the baseline with its simultaneous interval (the one
    the verdict reads; an end at 0 from a Holm rejection drawn open), coloured by verdict, and
    the ±min-effect band."""
    shown = [c for c in comparisons if not math.isnan(c.delta)]
    base = shown[0].baseline.label if shown else ""
    planned = any(c.look for c in shown)
    _interval_plot(
        [(c.config.label, c.delta, c.low, c.high, c.verdict) for c in shown],
        shown[0].min_effect if shown else math.nan,
        f"final val top-1 minus the baseline's ({base}); simultaneous 95% intervals",
        "difference to the baseline over seeds ("
        + ("planned looks" if planned else "Holm over both directions")
        + ")",
        path,
    )


def effects_plot(rows: list[Any], min_effect: float, path: Path) -> None:
    """Main effects and interactions with their simultaneous intervals, coloured by verdict,
    and under each main effect that an interaction may change, its simple effects in grey."""
    shown = [
        # a simple effect has no verdict: drawn faint, under its main effect
        (("↳ " if r.kind == "simple" else "") + r.name, r.estimate, r.low, r.high, r.verdict)
        if r.kind != "simple"
        else ("↳ " + r.name, r.estimate, r.low, r.high, "")
        for r in rows
        if not math.isnan(r.estimate)
    ]
    _interval_plot(
        shown,
        min_effect,
        "effect on final val top-1 (contrast of cell means); simultaneous 95% intervals",
        "effects per factor over seeds (↳ simple effects, faint: no verdict)",
        path,
    )


def _interval_plot(
    rows: list[tuple[str, float, float, float, str]],
    min_effect: float,
    xlabel: str,
    title: str,
    path: Path,
) -> None:
    """One horizontal interval per (label, estimate, low, high, verdict), top to bottom, with 0
    and the ±min-effect band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * max(1, len(rows))))
    ys = list(range(len(rows)))[::-1]  # the first row on top, as the tables read
    for y, (_, estimate, low, high, verdict) in zip(ys, rows):
        colour = VERDICT_COLOURS.get(verdict, "tab:grey" if verdict else "silver")
        if not math.isnan(low):
            ax.plot([low, high], [y, y], color=colour, lw=2 if verdict else 1)
            for end in (low, high):
                if end == 0 and verdict in ("better", "worse"):  # "> 0": an open end
                    ax.plot(end, y, "o", mfc="white", color=colour, markersize=5)
        ax.plot(estimate, y, "o", color=colour)
        if verdict:
            ax.annotate(
                verdict, (estimate, y), fontsize=7, xytext=(0, 6), textcoords="offset points"
            )
    ax.axvline(0.0, color="black", lw=1)
    if min_effect > 0:
        ax.axvspan(
            -min_effect, min_effect, color="tab:blue", alpha=0.08, label=f"±{min_effect:.4f}"
        )
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
