"""Figures of compare.py and soak.py results, drawn with matplotlib (the optional ``bench`` extra).

Every function takes the JSON-able result the tools write, so a figure can be redrawn from a saved
JSON file: ``python benchmarks/plots.py scaling.json scaling.png``. Without matplotlib the tools still
measure and write their tables; they print :data:`MISSING` instead of drawing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MISSING = "plots need matplotlib: pip install 'infrakit-instance[bench]' (or 'matplotlib>=3.8')"

# How the targets of README's runs are named in a legend; --label NAME=TEXT overrides.
DEFAULT_LABELS = {
    "compiled": "this plugin, compiled",
    "pure": "this plugin, pure",
    "c": "C plugin",
    "go": "Go file plugin",
    "ceiling": "trivial C epoll server (ceiling)",
}
_STYLE = {  # fixed colours per README target, so every figure agrees
    "compiled": ("#1f77b4", "o"),
    "pure": ("#6baed6", "s"),
    "c": ("#d62728", "^"),
    "go": ("#2ca02c", "D"),
    "ceiling": ("#444444", "x"),
}
_OTHER = (("#ff7f0e", "v"), ("#9467bd", "P"), ("#8c564b", "X"), ("#e377c2", "*"))


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_of(name: str, labels: Mapping[str, str] | None = None) -> str:
    return (labels or {}).get(name) or DEFAULT_LABELS.get(name, name)


def _style(names: list[str]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    spare = iter(_OTHER * 4)
    for n in names:
        out[n] = _STYLE.get(n) or next(spare)
    return out


def _si(v: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _log_y(ax: Any) -> None:
    """Log y with plain numbers (2k, 40, 0.5) on the major and minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _si(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No timestamps in the file: a redrawn figure of the same data is the same file.
    meta = {"Date": None} if path.suffix == ".svg" else {}
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata=meta or None)
    _plt().close(fig)


# ---------------------------------------------------------------------------------------------
# Scaling: throughput and p99 against state size, 0 in a panel of its own


def plot_scaling(
    result: dict[str, Any], path: Path, merged: dict[tuple[str, int, str], dict[str, Any]], labels: Mapping[str, str]
) -> None:
    """Rows: ok req/s and p99 latency (log y); columns: the methods. Each panel's x axis is broken:
    the empty state in a narrow panel on its left, the other sizes on a log axis. Hollow markers are
    cells whose prefill was capped (drawn at the size reached)."""
    plt = _plt()
    from matplotlib.ticker import FixedLocator, NullLocator

    methods = list(dict.fromkeys(k[2] for k in merged))
    names = result["targets"]
    sizes = sorted(result["sizes"])
    nonzero = [s for s in sizes if s > 0]
    has_zero = 0 in sizes
    style = _style(names)
    metrics = (("ok_rps", "ok requests/s"), ("p99_ms", "p99 latency, ms"))
    ncols = len(methods) * (2 if has_zero and nonzero else 1)
    ratios = [1, 5] * len(methods) if has_zero and nonzero else [1] * len(methods)
    fig, axes = plt.subplots(
        2,
        ncols,
        figsize=(4.6 * len(methods), 7.2),
        gridspec_kw={"width_ratios": ratios, "wspace": 0.06},
        squeeze=False,
    )
    fig.subplots_adjust(wspace=0.06)
    for row, (key, ylabel) in enumerate(metrics):
        for i, method in enumerate(methods):
            if has_zero and nonzero:
                ax0, ax = axes[row][2 * i], axes[row][2 * i + 1]
            else:
                ax0, ax = (axes[row][i] if has_zero else None), (None if has_zero else axes[row][i])
            vals: list[float] = []
            for n in names:
                color, marker = style[n]
                pts = []
                for s in sizes:
                    c = merged.get((n, s, method))
                    if c and c.get("status") == "ok" and (c.get(key) or 0) > 0:
                        pts.append((c["reached"] if c["capped"] else s, c[key], bool(c["capped"])))
                vals += [v for _, v, _ in pts]
                for a, sel in ((ax0, [p for p in pts if p[0] == 0]), (ax, [p for p in pts if p[0] > 0])):
                    if a is None or not sel:
                        continue
                    xs = [p[0] if p[0] > 0 else 0 for p in sel]
                    a.plot(xs, [p[1] for p in sel], color=color, lw=2, marker=marker, ms=7, label=label_of(n, labels))
                    for x, v, capped in sel:
                        if capped:
                            a.plot([x], [v], marker=marker, ms=7, color=color, mfc="white", mew=2)
            for a in (ax0, ax):
                if a is None:
                    continue
                _log_y(a)
                a.grid(True, which="major", color="#ddd")
                if vals:
                    a.set_ylim(min(vals) / 1.8, max(vals) * 1.8)
            if ax is not None:
                ax.set_xscale("log")
                ax.set_xlim(min(nonzero) / 2, max(nonzero) * 2)
                ax.xaxis.set_major_locator(FixedLocator(nonzero))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels([_si(s) for s in nonzero])
            if ax0 is not None:
                ax0.set_xlim(-1, 1)
                ax0.set_xticks([0])
                ax0.set_xticklabels(["empty"])
            if ax0 is not None and ax is not None:
                # The break: no shared spine, diagonal marks where the axis is cut.
                ax0.spines["right"].set_visible(False)
                ax.spines["left"].set_visible(False)
                ax.tick_params(axis="y", which="both", left=False, labelleft=False)
                kw = {"marker": [(-1, -1.5), (1, 1.5)], "ms": 10, "ls": "none", "color": "k", "mec": "k", "mew": 1}
                ax0.plot([1, 1], [0, 1], transform=ax0.transAxes, clip_on=False, **kw)
                ax.plot([0, 0], [0, 1], transform=ax.transAxes, clip_on=False, **kw)
            first = ax0 if ax0 is not None else ax
            if i == 0:
                first.set_ylabel(ylabel)
            if row == 0:
                (ax if ax is not None else first).set_title(method, loc="left" if ax0 is not None else "center")
            if row == 1:
                (ax if ax is not None else first).set_xlabel("instances in state")
    handles, lab = [], []
    for a in axes.flat:
        for h, t in zip(*a.get_legend_handles_labels(), strict=True):
            if t not in lab:
                handles.append(h)
                lab.append(t)
    if handles:  # none when no point had a rate (every destroy run ran out)
        fig.legend(handles, lab, loc="lower center", ncol=len(lab), frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(
        f"Throughput and p99 latency against state size ({result['connections']} connections; "
        "hollow: prefill capped, drawn at the size reached)",
        fontsize=11,
    )
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Concurrency sweep: throughput and CPU per request against connections


def plot_sweep(result: dict[str, Any], path: Path, labels: Mapping[str, str]) -> None:
    """Rows: ok req/s and server CPU µs per request (log y); columns: methods; x: connections (log 2)."""
    plt = _plt()
    from matplotlib.ticker import FixedLocator, NullLocator

    methods = series_of(result)
    names = result["targets"]
    levels = result["levels"]
    style = _style(names)
    fig, axes = plt.subplots(2, len(methods), figsize=(4.4 * len(methods), 7.0), squeeze=False)
    merged = sweep_points(result)
    for i, method in enumerate(methods):
        for row, (key, ylabel) in enumerate((("ok_rps", "ok requests/s"), ("cpu_us", "server CPU per request, µs"))):
            ax = axes[row][i]
            for n in names:
                color, marker = style[n]
                pts = [(c, merged[(n, method, c)][key]) for c in levels if (n, method, c) in merged]
                pts = [(c, v) for c, v in pts if v]
                if pts:
                    ax.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        color=color,
                        marker=marker,
                        lw=2,
                        ms=6,
                        label=label_of(n, labels),
                    )
            ax.set_xscale("log", base=2)
            _log_y(ax)
            ax.xaxis.set_major_locator(FixedLocator(levels))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(c) for c in levels])
            ax.set_xlim(min(levels) / 1.4, max(levels) * 1.4)
            ax.grid(True, which="major", color="#ddd")
            if i == 0:
                ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(method)
            else:
                ax.set_xlabel("connections")
    handles, lab = [], []
    for a in axes.flat:
        for h, t in zip(*a.get_legend_handles_labels(), strict=True):
            if t not in lab:
                handles.append(h)
                lab.append(t)
    if handles:  # none when no point had a rate (every destroy run ran out)
        fig.legend(handles, lab, loc="lower center", ncol=len(lab), frameon=False, bbox_to_anchor=(0.5, -0.03))
    fig.suptitle("Throughput and server CPU per request against concurrency", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    _save(fig, path)


def series_name(method: str, pipeline: int = 1) -> str:
    """How a sweep's method at a pipeline depth is named in its table and plot: ``validate ×8 pipelined``."""
    return method if pipeline <= 1 else f"{method} ×{pipeline} pipelined"


def series_of(result: dict[str, Any]) -> list[str]:
    """A sweep's series in order: each method at each pipeline depth (results before pipelining: methods)."""
    return [series_name(m, k) for m in result["methods"] for k in result.get("pipelines") or [1]]


def sweep_points(result: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(target, series, connections) -> the median point of its rounds (by throughput).

    A series is a method at one pipeline depth, named by :func:`series_name`."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for p in result["points"]:
        if p["status"] == "ok":
            key = (p["target"], series_name(p["method"], p.get("pipeline", 1)), p["connections"])
            groups.setdefault(key, []).append(p)
    out = {}
    for key, ps in groups.items():
        ps.sort(key=lambda p: p["ok_rps"])
        out[key] = ps[len(ps) // 2]
    return out


# ---------------------------------------------------------------------------------------------
# Soak: RSS over requests


def plot_soak(result: dict[str, Any], path: Path) -> None:
    """RSS (and the peak so far) against requests served, with the state file's size for scale."""
    plt = _plt()
    samples = result["samples"]
    xs = [0] + [s["requests"] for s in samples]
    rss = [result["rss_after_prefill_kb"] / 1024] + [s["rss_kb"] / 1024 for s in samples]
    peak = [result["rss_after_prefill_kb"] / 1024] + [s["peak_kb"] / 1024 for s in samples]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(xs, rss, marker="o", lw=2, color="#1f77b4", label="RSS")
    ax.plot(xs, peak, ls="--", lw=1.5, color="#888", label="peak RSS so far (VmHWM)")
    ax.set_ylim(0, max(peak) * 1.25)
    ax.set_xlim(0, xs[-1] * 1.02 if xs[-1] else 1)
    ax.set_xlabel("requests served after the prefill")
    ax.set_ylabel("MB")
    ax.xaxis.set_major_formatter(lambda v, _pos: _si(v))
    ax.grid(True, color="#ddd")
    ax.legend(loc="lower right", frameon=False)
    ax.set_title(
        f"Server memory over {xs[-1]:,} requests at {result['prefill']:,} instances "
        f"(mix {result['mix']}, {result['connections']} connections)",
        fontsize=10,
    )
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    """``plots.py RESULT.json OUT.(png|svg)``: redraw a figure from a saved compare.py or soak.py result."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: plots.py RESULT.json OUT.png", file=sys.stderr)
        return 2
    if not have_matplotlib():
        print(MISSING, file=sys.stderr)
        return 1
    result = json.loads(Path(args[0]).read_text())
    out = Path(args[1])
    labels = result.get("labels") or {}
    mode = result.get("mode")
    if mode == "scaling":
        sys.path.insert(0, str(Path(__file__).parent))
        import compare

        plot_scaling(result, out, compare.merge_rounds(result), labels)
    elif mode == "sweep":
        plot_sweep(result, out, labels)
    elif mode == "soak":
        plot_soak(result, out)
    else:
        print(f"plots: no figure for a result of mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
