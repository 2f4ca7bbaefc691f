"""Plain SVG charts for the report (no matplotlib: the report must render offline and `tunesmith report` must
stay fast). Every label goes through html.escape."""

from __future__ import annotations

import math
from html import escape

W, H = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 40  # margins leave room for tick labels and the legend


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high] (1, 2, 5 x 10^k steps)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class _Frame:
    """Maps data coordinates to pixels inside the margins."""

    def __init__(self, x_ticks: list[float], y_ticks: list[float]):
        self.x0, self.x1 = x_ticks[0], x_ticks[-1]
        self.y0, self.y1 = y_ticks[0], y_ticks[-1]
        self.x_ticks, self.y_ticks = x_ticks, y_ticks

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / ((self.x1 - self.x0) or 1) * (W - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return H - BOTTOM - (value - self.y0) / ((self.y1 - self.y0) or 1) * (H - TOP - BOTTOM)

    def axes(self, x_label: str, y_label: str) -> list[str]:
        parts = []
        for t in self.y_ticks:
            parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{self.y(t):.1f}" y2="{self.y(t):.1f}" '
                         'stroke="#e5e5e5"/>')
            parts.append(f'<text x="{LEFT - 6}" y="{self.y(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        for t in self.x_ticks:
            parts.append(f'<text x="{self.x(t):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{_fmt(t)}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#888"/>')
        parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#888"/>')
        parts.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">{escape(x_label)}</text>')
        parts.append(f'<text x="14" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2})">{escape(y_label)}</text>')
        return parts


def _open(element_id: str, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(element_id)}" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11" role="img">',
            f"<title>{escape(title)}</title>", f'<rect width="{W}" height="{H}" fill="white"/>']


def line_chart(series: list[dict], element_id: str, title: str, x_label: str, y_label: str) -> str:
    """series: [{"label", "color", "points": [(x, y)], "dashed": bool, "markers": bool}]."""
    points = [p for s in series for p in s["points"]]
    if not points:
        return ""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    frame = _Frame(nice_ticks(min(0.0, min(xs)), max(xs)), nice_ticks(min(ys), max(ys)))
    parts = _open(element_id, title) + frame.axes(x_label, y_label)
    legend_x = W - RIGHT - 110 * len(series)
    for k, s in enumerate(series):
        coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in s["points"])
        dash = ' stroke-dasharray="5 3"' if s.get("dashed") else ""
        parts.append(f'<polyline class="series" fill="none" stroke="{s["color"]}" stroke-width="2"{dash} '
                     f'points="{coords}"/>')
        if s.get("markers") or len(s["points"]) == 1:
            parts += [f'<circle r="3" fill="{s["color"]}" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}"/>'
                      for x, y in s["points"]]
        lx = legend_x + 110 * k
        parts.append(f'<line x1="{lx}" x2="{lx + 18}" y1="12" y2="12" stroke="{s["color"]}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{lx + 22}" y="16">{escape(s["label"])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def loss_chart(records: list[dict]) -> str:
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r and "step" in r]
    series = [{"label": "train loss", "color": "#1f77b4", "points": train}]
    if held:
        series.append({"label": "eval loss", "color": "#d62728", "points": held, "dashed": True, "markers": True})
    return line_chart(series, "loss-curve", "Training and eval loss by optimizer step", "optimizer step", "loss")


def histogram(values: list[float], element_id: str, title: str, x_label: str, bins: int = 20) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    frame = _Frame(nice_ticks(low, low + width * bins), nice_ticks(0, max(max(counts), 4)))  # whole-row ticks
    parts = _open(element_id, title) + frame.axes(x_label, "rows")
    for b, count in enumerate(counts):
        x_left, x_right = frame.x(low + b * width), frame.x(low + (b + 1) * width)
        parts.append(f'<rect class="bar" x="{x_left:.1f}" y="{frame.y(count):.1f}" '
                     f'width="{max(x_right - x_left - 1, 1):.1f}" height="{frame.y(0) - frame.y(count):.1f}" '
                     f'fill="#4c78a8"><title>{_fmt(low + b * width)}-{_fmt(low + (b + 1) * width)}: {count}'
                     "</title></rect>")
    parts.append("</svg>")
    return "\n".join(parts)
