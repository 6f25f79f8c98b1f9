"""Fare decisions per second (Trans Semarang and a large synthetic tariff) and bulk re-rating."""

from __future__ import annotations

import argparse
import gc
import os
import time
from typing import Any

from ksh.signals import Stop, stop_on_signals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", type=int, default=300_000, help="taps per decision loop")
    parser.add_argument("--rerate-taps", type=int, default=1_000_000, help="taps to re-rate")
    parser.add_argument("--rerate-cards", type=int, default=100_000, help="cards re-rated")
    parser.add_argument("--repeats", type=int, default=3, help="decision loops: best of N")


def _decision_loop(tariff: Any, rows: list[Any], repeats: int, stop: Stop) -> dict[str, float]:
    """Decisions and floor lookups per second: the same loop, trip state in, trip state out.

    Each figure is the best of `repeats` interleaved runs, by wall clock and by this process's
    CPU time (the machine is shared: CPU time shows what one core does while it is ours).
    """
    from bus_terminals.fare.engine import decide
    from bus_terminals.fare.model import blank_trip_state

    route_prices = dict.fromkeys(tariff.route_index, blank_trip_state)
    best = dict.fromkeys(("decide_wall", "decide_cpu", "floor_wall", "floor_cpu"), float("inf"))
    for _ in range(repeats):
        stop.check()
        states = dict.fromkeys((card for card, _ in rows), blank_trip_state)
        wall, cpu = time.perf_counter(), time.process_time()
        for card, tap in rows:
            states[card] = decide(tariff, states[card], tap).state
        best["decide_wall"] = min(best["decide_wall"], time.perf_counter() - wall)
        best["decide_cpu"] = min(best["decide_cpu"], time.process_time() - cpu)

        states = dict.fromkeys((card for card, _ in rows), blank_trip_state)
        wall, cpu = time.perf_counter(), time.process_time()
        for card, tap in rows:
            states[card] = route_prices[tap.route_id]
        best["floor_wall"] = min(best["floor_wall"], time.perf_counter() - wall)
        best["floor_cpu"] = min(best["floor_cpu"], time.process_time() - cpu)
    return {name: len(rows) / max(seconds, 1e-9) for name, seconds in best.items()}


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    from bus_terminals.fare.feed import load_feed
    from bus_terminals.fare.synthetic import day_of_taps

    if min(arguments.taps, arguments.rerate_taps, arguments.rerate_cards, arguments.repeats) < 1:
        raise ValueError("tap, card and repeat counts must be positive")
    semarang = load_feed()
    rows = day_of_taps(semarang, cards=max(arguments.taps // 8, 1), taps=arguments.taps)
    # SIGINT or SIGTERM (even SIGINT inherited ignored) ends the run between two timed loops.
    with stop_on_signals() as stop:
        return _measure(arguments, semarang, rows, stop)


def _measure(
    arguments: argparse.Namespace, semarang: Any, rows: list[Any], stop: Stop
) -> dict[str, Any]:
    from bus_terminals.fare.feed import compile_feed
    from bus_terminals.fare.rerate import group_taps_by_card, rerate_day
    from bus_terminals.fare.synthetic import day_of_taps, large_feed_texts

    gc.disable()
    try:
        semarang_rates = _decision_loop(semarang, rows, arguments.repeats, stop)
        stop.check()
        started = time.perf_counter()
        large = compile_feed(large_feed_texts())
        compile_large_s = time.perf_counter() - started
        large_rows = day_of_taps(large, cards=max(arguments.taps // 8, 1), taps=arguments.taps)
        large_rates = _decision_loop(large, large_rows, arguments.repeats, stop)
        rerate_rows = day_of_taps(
            semarang, cards=arguments.rerate_cards, taps=arguments.rerate_taps, seed=2
        )
        stop.check()
        started, started_cpu = time.perf_counter(), time.process_time()
        results = rerate_day(semarang, group_taps_by_card(rerate_rows))
        rerate_s = time.perf_counter() - started
        rerate_cpu_s = time.process_time() - started_cpu
    finally:
        gc.enable()
    rerate_name = "rerate_1m" if arguments.rerate_taps == 1_000_000 else "rerate"
    return {
        "decisions_per_s": round(semarang_rates["decide_wall"]),
        "decisions_per_s_large": round(large_rates["decide_wall"]),
        "floor_lookups_per_s": round(semarang_rates["floor_wall"]),
        f"{rerate_name}_s": round(rerate_s, 3),
        "decisions_per_cpu_s": round(semarang_rates["decide_cpu"]),
        "decisions_per_cpu_s_large": round(large_rates["decide_cpu"]),
        "floor_lookups_per_cpu_s": round(semarang_rates["floor_cpu"]),
        f"{rerate_name}_cpu_s": round(rerate_cpu_s, 3),
        "floor_over_decide_ratio": round(
            semarang_rates["floor_wall"] / semarang_rates["decide_wall"], 1
        ),
        "rerate_taps": len(rerate_rows),
        "rerate_cards": len(results),
        "taps": len(rows),
        "repeats": arguments.repeats,
        "compile_large_tariff_s": round(compile_large_s, 3),
        "large_tariff": {"networks": 100, "areas": 1000, "leg_rules": 10000},
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
