"""Allocation curves as a self-contained SVG (or PNG when matplotlib happens to be installed)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

_PALETTE: Final = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_W, _H = 760, 460
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 190, 40, 56


def render_svg(
    curves: Mapping[str, Sequence[float]], title: str, y_min: float | None = None, x_min: int = 0
) -> str:
    """SVG text of allocated GPU % (y) against arrived GPU % (x, the curve index, from ``x_min``)."""
    finite = [v for c in curves.values() for v in c[x_min:] if not math.isnan(v)]
    if not finite:
        raise ValueError("no data to plot")
    x_max = max(len(c) for c in curves.values()) - 1
    lo = math.floor(min(finite) / 5) * 5 if y_min is None else y_min
    hi = max(float(math.ceil(max(finite) / 5) * 5), lo + 5)
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + pw * (x - x_min) / max(x_max - x_min, 1)

    def sy(y: float) -> float:
        return _TOP + ph * (1 - (min(max(y, lo), hi) - lo) / (hi - lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_W / 2 - _RIGHT / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    step = 10 if x_max - x_min > 60 else 5
    for x in range(x_min, x_max + 1, step):
        out.append(f'<line x1="{sx(x):.1f}" y1="{_TOP}" x2="{sx(x):.1f}" y2="{_TOP + ph}" stroke="#eee"/>')
        out.append(f'<text x="{sx(x):.1f}" y="{_TOP + ph + 16}" text-anchor="middle">{x}</text>')
    y_step = 5 if hi - lo > 20 else 1
    y = lo
    while y <= hi + 1e-9:
        out.append(f'<line x1="{_LEFT}" y1="{sy(y):.1f}" x2="{_LEFT + pw}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        y += y_step
    out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    x_label = "arrived GPU workload (% of capacity)"
    out.append(f'<text x="{_LEFT + pw / 2}" y="{_H - 14}" text-anchor="middle">{x_label}</text>')
    y_at = f"translate(16 {_TOP + ph / 2}) rotate(-90)"
    out.append(f'<text transform="{y_at}" text-anchor="middle">allocated GPU (%)</text>')
    for n, (name, curve) in enumerate(curves.items()):
        color = _PALETTE[n % len(_PALETTE)]
        points = " ".join(
            f"{sx(x):.1f},{sy(v):.1f}" for x, v in enumerate(curve) if x >= x_min and not math.isnan(v)
        )
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{points}"/>')
        last = next((v for v in reversed(curve) if not math.isnan(v)), math.nan)
        ly = _TOP + 14 + 18 * n
        lx = _LEFT + pw + 12
        out.append(
            f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{color}" stroke-width="3"/>'
        )
        out.append(f'<text x="{_LEFT + pw + 36}" y="{ly}">{escape(name)} ({last:.2f})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_plot(
    path: Path, curves: Mapping[str, Sequence[float]], title: str, y_min: float | None = None, x_min: int = 0
) -> None:
    """Write ``.svg`` natively; ``.png`` needs matplotlib (not a dependency of hami-py)."""
    if path.suffix.lower() == ".svg":
        path.write_text(render_svg(curves, title, y_min, x_min), encoding="utf-8")
        return
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot file must end in .svg or .png: {path}")
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise ValueError(
            "writing PNG needs matplotlib (pip install matplotlib); or use a .svg file"
        ) from None
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    fig, ax = pyplot.subplots(figsize=(8, 4.8))
    for name, curve in curves.items():
        ax.plot(range(x_min, len(curve)), list(curve)[x_min:], label=name)
    ax.set_xlabel("arrived GPU workload (% of capacity)")
    ax.set_ylabel("allocated GPU (%)")
    if y_min is not None:
        ax.set_ylim(bottom=y_min)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)
