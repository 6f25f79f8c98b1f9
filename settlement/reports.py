"""Reports for people outside the pages: the day's settlement batches as a PDF (fpdf2)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from fpdf import FPDF

from settlement import formatting, i18n
from settlement.formatting import grouped


def batches_pdf_bytes(
    day: dt.date,
    rows: Sequence[Any],
    language: str = formatting.default_language,
    held: Sequence[str] = (),
) -> bytes:
    """One table per day: batch, party, account, gross, fees, net, state; totals at the end;
    then `held`: what the day's uploads held in quarantine (`views.HeldInQuarantine.lines`); in
    `language` (headings, words, numbers and the date)."""
    _ = i18n.translations("settlement", language).gettext
    ngettext = i18n.translations("settlement", language).ngettext

    def money(amount: int) -> str:
        return formatting.rupiah(amount, language)

    pdf = FPDF(orientation="L", unit="mm", format="A4")
    pdf.set_title(_("KSH settlement %(day)s") % {"day": day.isoformat()})
    pdf.set_author("KSH back office")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(
        0,
        10,
        _("Kartu Semarang Hebat - settlement batches, service day %(day)s")
        % {"day": formatting.day(day, language)},
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.set_font("Helvetica", "", 9)
    widths = (30, 70, 45, 32, 28, 32, 40)
    headers = (_("Batch"), _("Party"), _("Paid to"), _("Gross"), _("Fees"), _("Net"), _("State"))
    pdf.set_fill_color(230, 236, 245)
    pdf.set_font("Helvetica", "B", 9)
    for index, (width, header) in enumerate(zip(widths, headers, strict=True)):
        pdf.cell(width, 7, header, border=1, fill=True, align="R" if index in (3, 4, 5) else "L")
    pdf.ln()
    pdf.set_font("Helvetica", "", 9)
    totals = [0, 0, 0]
    for row in rows:
        cells = (
            row["batch_id"],
            f"{row['party_kind']} {row['party_id']} {row['name'] or ''}"[:45],
            f"{row['bank_code'] or _('same bank')} {row['account_no'] or '-'}",
            money(row["gross_rupiah"]),
            money(row["fees_rupiah"]),
            money(row["net_rupiah"]),
            _("confirmed") if row["confirmed"] else _("in transit"),
        )
        totals[0] += row["gross_rupiah"]
        totals[1] += row["fees_rupiah"]
        totals[2] += row["net_rupiah"]
        for width, (index, text) in zip(widths, enumerate(cells), strict=True):
            pdf.cell(width, 6, str(text), border=1, align="R" if index in (3, 4, 5) else "L")
        pdf.ln()
    pdf.set_font("Helvetica", "B", 9)
    count = ngettext("%(num)s batch", "%(num)s batches", len(rows)) % {"num": len(rows)}
    pdf.cell(widths[0] + widths[1] + widths[2], 7, count, border=1)
    for width, total in zip(widths[3:6], totals, strict=True):
        pdf.cell(width, 7, money(total), border=1, align="R")
    pdf.cell(widths[6], 7, "", border=1)
    pdf.ln()
    pdf.ln()
    pdf.set_font("Helvetica", "", 9)
    for line in held:
        pdf.cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def demo_report_html(
    summary: dict[str, Any], charts_svg: Sequence[str], tables: dict[str, list[dict[str, Any]]]
) -> str:
    """A self-contained HTML page: the day's figures, charts, exceptions and batches."""
    from html import escape

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "NO"
        if isinstance(value, int):
            return grouped(value)
        return escape(str(value))

    figures = "".join(
        f"<tr><th>{escape(key.replace('_', ' '))}</th><td>{cell(value)}</td></tr>"
        for key, value in summary.items()
        if not isinstance(value, (dict, list))
    )
    invariants = summary.get("invariants", {})
    checks = "".join(
        f'<tr><th>{escape(name.replace("_", " "))}</th><td class="{"ok" if ok else "bad"}">{"holds" if ok else "FAILS"}</td></tr>'
        for name, ok in invariants.items()
    )
    sections = ""
    for title, rows in tables.items():
        if not rows:
            sections += f"<h2>{escape(title)}</h2><p>None.</p>"
            continue
        columns = list(rows[0])
        head = "".join(f"<th>{escape(column.replace('_', ' '))}</th>" for column in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{cell(row[c])}</td>" for c in columns) + "</tr>" for row in rows
        )
        sections += f"<h2>{escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    style = (
        "body{font-family:system-ui,sans-serif;margin:24px;color:#111827;max-width:1100px}"
        "table{border-collapse:collapse;margin:8px 0 20px;font-size:14px}th,td{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left}"
        "td.ok{color:#047857;font-weight:600}td.bad{color:#b91c1c;font-weight:700}.charts svg{margin:0 12px 12px 0;border:1px solid #e5e7eb;border-radius:6px}"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>KSH demo {escape(str(summary.get("service_day", "")))}</title>'
        f"<style>{style}</style></head><body><h1>Kartu Semarang Hebat: a simulated service day</h1>"
        f"<h2>Invariants</h2><table>{checks}</table><h2>Figures</h2><table>{figures}</table>"
        f'<h2>Charts</h2><div class="charts">{"".join(charts_svg)}</div>{sections}</body></html>'
    )
