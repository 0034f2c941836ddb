"""Small self-contained SVG charts and the HTML report (no plotting library needed)."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from assft.training.curves import LearningCurve

PALETTE = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#17becf",
    "#bcbd22",
]


Scale = Callable[[float], float]


def _scale(
    values: Sequence[float | None], lo_px: float, hi_px: float, pad: float = 0.05
) -> tuple[Scale, float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    return (lambda v: lo_px + (v - lo) / (hi - lo) * (hi_px - lo_px)), lo, hi


def _axes(
    width: int,
    height: int,
    margin: int,
    x_label: str,
    y_label: str,
    lo_x: float,
    hi_x: float,
    lo_y: float,
    hi_y: float,
    sx: Scale,
    sy: Scale,
) -> list[str]:
    parts = [
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - 10}" y2="{height - margin}" '
        'stroke="#333"/>',
        f'<line x1="{margin}" y1="10" x2="{margin}" y2="{height - margin}" stroke="#333"/>',
        f'<text x="{(width + margin) / 2}" y="{height - 8}" text-anchor="middle" font-size="12">'
        f"{html.escape(x_label)}</text>",
        f'<text x="14" y="{(height - margin) / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {(height - margin) / 2})">{html.escape(y_label)}</text>',
    ]
    for i in range(5):
        vx = lo_x + (hi_x - lo_x) * i / 4
        vy = lo_y + (hi_y - lo_y) * i / 4
        parts.append(
            f'<text x="{sx(vx):.1f}" y="{height - margin + 14}" text-anchor="middle" '
            f'font-size="10">{vx:.3g}</text>'
        )
        parts.append(
            f'<text x="{margin - 4}" y="{sy(vy) + 3:.1f}" text-anchor="end" font-size="10">'
            f"{vy:.3g}</text>"
        )
    return parts


def scatter_svg(
    points: list[dict[str, Any]], *, x: str, y: str, title: str, width: int = 520, height: int = 380
) -> str:
    """A scatter of ``points`` (dicts with x, y, label, highlight) with highlighted ones marked."""
    margin = 50
    sx, lo_x, hi_x = _scale([p[x] for p in points], margin, width - 20)
    sy, lo_y, hi_y = _scale([p[y] for p in points], height - margin, 20)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
    ]
    parts += _axes(width, height, margin, x, y, lo_x, hi_x, lo_y, hi_y, sx, sy)
    for p in sorted(points, key=lambda p: bool(p.get("highlight"))):
        if p[x] is None or p[y] is None:
            continue
        cx, cy = sx(p[x]), sy(p[y])
        if p.get("highlight"):
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="#d62728" stroke="#000"/>'
            )
            parts.append(
                f'<text x="{cx + 9:.1f}" y="{cy - 6:.1f}" font-size="10">'
                f"{html.escape(str(p.get('label', '')))}</text>"
            )
        else:
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="#1f77b4" fill-opacity="0.7">'
                f"<title>{html.escape(str(p.get('label', '')))}</title></circle>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


def bars_svg(
    groups: Mapping[str, Mapping[str, float | None]],
    *,
    title: str,
    y_label: str = "Dice",
    width: int = 620,
    height: int = 360,
) -> str:
    """Grouped bars: ``groups[series][category] = value``."""
    margin = 50
    series = list(groups)
    categories = sorted({c for g in groups.values() for c in g})
    sy, lo_y, hi_y = _scale([0.0, 1.0], height - margin, 20, pad=0.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
    ]
    parts += _axes(width, height, margin, "", y_label, 0, 1, lo_y, hi_y, lambda v: margin, sy)[:2]
    for i in range(5):
        v = i / 4
        parts.append(
            f'<text x="{margin - 4}" y="{sy(v) + 3:.1f}" text-anchor="end" font-size="10">'
            f"{v:.2f}</text>"
        )
    slot = (width - margin - 20) / max(1, len(categories))
    bar = slot * 0.8 / max(1, len(series))
    for ci, category in enumerate(categories):
        x0 = margin + ci * slot + slot * 0.1
        parts.append(
            f'<text x="{x0 + slot * 0.4:.1f}" y="{height - margin + 14}" text-anchor="middle" '
            f'font-size="11">{html.escape(category)}</text>'
        )
        for si, name in enumerate(series):
            value = groups[name].get(category)
            if value is None or not math.isfinite(value):
                continue
            top = sy(value)
            parts.append(
                f'<rect x="{x0 + si * bar:.1f}" y="{top:.1f}" width="{bar - 2:.1f}" '
                f'height="{height - margin - top:.1f}" fill="{PALETTE[si % len(PALETTE)]}">'
                f"<title>{html.escape(name)}: {value:.3f}</title></rect>"
            )
    for si, name in enumerate(series):
        parts.append(
            f'<rect x="{width - 170}" y="{24 + si * 16}" width="10" height="10" '
            f'fill="{PALETTE[si % len(PALETTE)]}"/>'
            f'<text x="{width - 155}" y="{33 + si * 16}" font-size="11">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def lines_svg(
    series: dict[str, list[tuple[float, float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 620,
    height: int = 400,
) -> str:
    """Lines with error bars: ``series[name] = [(x, mean, spread), ...]``."""
    margin = 50
    xs = [p[0] for points in series.values() for p in points]
    ys = [v for points in series.values() for p in points for v in (p[1] - p[2], p[1] + p[2])]
    sx, lo_x, hi_x = _scale(xs, margin, width - 180)
    sy, lo_y, hi_y = _scale(ys, height - margin, 20)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">'
        f"{html.escape(title)}</text>",
    ]
    parts += _axes(width, height, margin, x_label, y_label, lo_x, hi_x, lo_y, hi_y, sx, sy)
    for si, (name, points) in enumerate(series.items()):
        color = PALETTE[si % len(PALETTE)]
        points = sorted(points)
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(m):.1f}" for i, (x, m, _) in enumerate(points)
        )
        parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, m, spread in points:
            parts.append(
                f'<line x1="{sx(x):.1f}" y1="{sy(m - spread):.1f}" x2="{sx(x):.1f}" '
                f'y2="{sy(m + spread):.1f}" stroke="{color}"/>'
            )
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(m):.1f}" r="3" fill="{color}"/>')
        parts.append(
            f'<rect x="{width - 170}" y="{24 + si * 16}" width="10" height="10" fill="{color}"/>'
            f'<text x="{width - 155}" y="{33 + si * 16}" font-size="11">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A standalone HTML page of (heading, html body) sections."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def html_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if not math.isfinite(value) else f"{value:.4f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def learning_curve_svgs(curves: dict[str, dict[str, Any]]) -> str:
    """Two charts of fine-tuning jobs' learning curves (``LearningCurve.to_dict()`` by name):
    the training loss and the held-out Dice by step (stage 2's steps follow stage 1's)."""

    points = {name: LearningCurve.from_dict(c).points() for name, c in curves.items()}
    loss = {name: [(float(x), y, 0.0) for x, y in p[0]] for name, p in points.items() if p[0]}
    dice = {name: [(float(x), y, 0.0) for x, y in p[1]] for name, p in points.items() if p[1]}
    parts = []
    if loss:
        parts.append(lines_svg(loss, title="Training loss", x_label="step", y_label="loss"))
    if dice:
        parts.append(
            lines_svg(dice, title="Held-out Dice while training", x_label="step", y_label="Dice")
        )
    return "\n".join(parts) or "<p>No learning curve was recorded.</p>"
