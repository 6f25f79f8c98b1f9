"""Prometheus counters of the terminal side, added up across `ksh serve`'s processes.

Backed by prometheus-client (`gateways.observability`): in multiprocess mode every serving
process writes its values to a shared folder and `/metrics` from any of them shows the sums.
The metric names are the ones `/metrics` has always shown; the upload latency histogram is new.
"""

from __future__ import annotations

from typing import Any

from gateways.observability import Registry, labels_max, request_duration_buckets_s


class LabelledCounter:
    """A counter with one label, refusing new label values past `labels_max`."""

    def __init__(self, registry: Registry, name: str, help_text: str, label: str) -> None:
        assert name.endswith("_total")
        self.name = name
        self.counter: Any = registry.counter(name.removesuffix("_total"), help_text, (label,))
        self.seen: set[str] = set()

    def increment(self, label_value: str, amount: float = 1) -> None:
        if label_value not in self.seen:
            if len(self.seen) >= labels_max:
                return
            self.seen.add(label_value)
        self.counter.labels(label_value).inc(amount)


class TerminalMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.uploads = LabelledCounter(
            registry, "ksh_terminal_uploads_total", "Upload batches by result.", "result"
        )
        self.records = LabelledCounter(
            registry,
            "ksh_terminal_records_total",
            "Upload records by what the back office made of them.",
            "outcome",
        )
        self.card_flags = LabelledCounter(
            registry, "ksh_card_flags_total", "Cards flagged by monitoring, by reason.", "reason"
        )
        self.upload_seconds = LabelledCounter(
            registry,
            "ksh_terminal_upload_seconds_total",
            "Time spent booking uploads.",
            "result",
        )
        self.charged_without_service = LabelledCounter(
            registry,
            "ksh_taps_charged_without_service_total",
            "Fares booked that the validator charged in full because its fare feed has no "
            "service on the tap's date (a stale feed: ship it a new one), by terminal.",
            "terminal",
        )
        self.fleet_refusals = LabelledCounter(
            registry,
            "ksh_fleet_package_refusals_total",
            "Fleet packages a terminal reported it refused (bad signature, wrong hash, invalid "
            "content, not newer), by reason.",
            "reason",
        )
        self.upload_duration = registry.histogram(
            "ksh_terminal_upload_duration_seconds",
            "Upload requests from receipt to answer (booking and replication included), by result.",
            ("result",),
            request_duration_buckets_s,
        )

    def observe_upload(self, result: str, elapsed_s: float) -> None:
        self.uploads.increment(result)
        self.upload_seconds.increment(result, elapsed_s)
        self.upload_duration.labels(result).observe(elapsed_s)

    def render(self) -> str:
        return self.registry.render()
