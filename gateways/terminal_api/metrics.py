"""Prometheus counters of the terminal side, written out in the text exposition format.

Hand-written (a few labelled counters) rather than a dependency: one process, no multiprocess
registry to manage. `render()` is what `/metrics` returns.
"""

from __future__ import annotations

labels_max = 1_000  # a counter refuses new label values past this: bounded memory


class LabelledCounter:
    def __init__(self, name: str, help_text: str, label: str) -> None:
        self.name = name
        self.help_text = help_text
        self.label = label
        self.values: dict[str, float] = {}

    def increment(self, label_value: str, amount: float = 1) -> None:
        if label_value in self.values or len(self.values) < labels_max:
            self.values[label_value] = self.values.get(label_value, 0) + amount

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} counter"]
        for value, count in sorted(self.values.items()):
            lines.append(f'{self.name}{{{self.label}="{value}"}} {count:g}')
        return "\n".join(lines)


class TerminalMetrics:
    def __init__(self) -> None:
        self.uploads = LabelledCounter(
            "ksh_terminal_uploads_total", "Upload batches by result.", "result"
        )
        self.records = LabelledCounter(
            "ksh_terminal_records_total",
            "Upload records by what the back office made of them.",
            "outcome",
        )
        self.card_flags = LabelledCounter(
            "ksh_card_flags_total", "Cards flagged by monitoring, by reason.", "reason"
        )
        self.upload_seconds = LabelledCounter(
            "ksh_terminal_upload_seconds_total", "Time spent booking uploads.", "result"
        )
        self.charged_without_service = LabelledCounter(
            "ksh_taps_charged_without_service_total",
            "Fares booked that the validator charged in full because its fare feed has no "
            "service on the tap's date (a stale feed: ship it a new one), by terminal.",
            "terminal",
        )

    def render(self) -> str:
        parts = [
            self.uploads,
            self.records,
            self.card_flags,
            self.upload_seconds,
            self.charged_without_service,
        ]
        return "\n".join(part.render() for part in parts) + "\n"
