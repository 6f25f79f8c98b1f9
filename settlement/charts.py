"""Small charts as inline SVG, drawn on the server: no JavaScript, printable, testable."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from settlement.formatting import default_language, grouped

chart_bars_max = 48


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, int]],
    *,
    unit: str = "",
    width_px: int = 640,
    height_px: int = 220,
    empty: str = "no data for this day",
    language: str = default_language,
) -> str:
    """Vertical bars with their labels under them and values over them; `empty` (in the
    reader's language, as the title and unit are) when every bar is zero."""
    assert len(bars) <= chart_bars_max, "summarise before drawing"
    top, bottom, left = 28, 36, 8
    plot_height = height_px - top - bottom
    peak = max((value for _, value in bars), default=0) or 1
    slot = (width_px - 2 * left) / max(len(bars), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'width="{width_px}" height="{height_px}" viewBox="0 0 {width_px} {height_px}" class="chart">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#1f2937">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_height}" x2="{width_px - left}" y2="{top + plot_height}" stroke="#9ca3af"/>',
    ]
    for index, (label, value) in enumerate(bars):
        bar_height = round(plot_height * value / peak)
        x = left + index * slot + slot * 0.15
        bar_width = slot * 0.7
        y = top + plot_height - bar_height
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{bar_width:.1f}" height="{bar_height}" fill="#2563eb">'
            f"<title>{escape(label)}: {grouped(value, language)} {escape(unit)}</title></rect>"
        )
        if len(bars) <= 24 or index % 2 == 0:
            parts.append(
                f'<text x="{x + bar_width / 2:.1f}" y="{top + plot_height + 14}" font-size="10" '
                f'text-anchor="middle" fill="#374151">{escape(label)}</text>'
            )
        if value and len(bars) <= 16:
            parts.append(
                f'<text x="{x + bar_width / 2:.1f}" y="{y - 3}" font-size="9" text-anchor="middle" '
                f'fill="#111827">{grouped(value, language)}</text>'
            )
    if not any(value for _, value in bars):
        parts.append(
            f'<text x="{width_px / 2:.0f}" y="{top + plot_height / 2:.0f}" font-size="12" '
            f'text-anchor="middle" fill="#6b7280">{escape(empty)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
