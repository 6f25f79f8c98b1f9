"""Fare decisions per second (Trans Semarang and a large synthetic tariff) and bulk re-rating."""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", type=int, default=300_000, help="taps per decision loop")
    parser.add_argument("--rerate-taps", type=int, default=1_000_000, help="taps to re-rate")
    parser.add_argument("--rerate-cards", type=int, default=100_000, help="cards re-rated")
    parser.add_argument("--repeats", type=int, default=3, help="decision loops: best of N")


def _decision_loop(tariff: Any, rows: list[Any], repeats: int) -> tuple[float, float]:
    """(decisions/s, floor lookups/s): the same loop, card state in, card state out.

    Each is the best of `repeats` runs, interleaved, so a busy neighbour on the machine
    slows both rather than one.
    """
    from bus_terminals.fare.engine import decide
    from bus_terminals.fare.model import blank_card_state

    route_prices = dict.fromkeys(tariff.route_index, blank_card_state)
    decide_s = floor_s = float("inf")
    for _ in range(repeats):
        states = dict.fromkeys((card for card, _ in rows), blank_card_state)
        started = time.perf_counter()
        for card, tap in rows:
            states[card] = decide(tariff, states[card], tap).state
        decide_s = min(decide_s, time.perf_counter() - started)

        states = dict.fromkeys((card for card, _ in rows), blank_card_state)
        started = time.perf_counter()
        for card, tap in rows:
            states[card] = route_prices[tap.route_id]
        floor_s = min(floor_s, time.perf_counter() - started)
    return len(rows) / decide_s, len(rows) / floor_s


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    from bus_terminals.fare.feed import compile_feed, load_feed
    from bus_terminals.fare.rerate import group_taps_by_card, rerate_day
    from bus_terminals.fare.synthetic import day_of_taps, large_feed_texts

    if min(arguments.taps, arguments.rerate_taps, arguments.rerate_cards, arguments.repeats) < 1:
        raise ValueError("tap and card counts must be positive")
    semarang = load_feed()
    rows = day_of_taps(semarang, cards=max(arguments.taps // 8, 1), taps=arguments.taps)
    gc.disable()
    try:
        decisions_per_s, floor_per_s = _decision_loop(semarang, rows, arguments.repeats)
        started = time.perf_counter()
        large = compile_feed(large_feed_texts())
        compile_large_s = time.perf_counter() - started
        large_rows = day_of_taps(large, cards=max(arguments.taps // 8, 1), taps=arguments.taps)
        decisions_large_per_s, _ = _decision_loop(large, large_rows, arguments.repeats)
        rerate_rows = day_of_taps(
            semarang, cards=arguments.rerate_cards, taps=arguments.rerate_taps, seed=2
        )
        started = time.perf_counter()
        results = rerate_day(semarang, group_taps_by_card(rerate_rows))
        rerate_s = time.perf_counter() - started
    finally:
        gc.enable()
    return {
        "decisions_per_s": round(decisions_per_s),
        "decisions_per_s_large": round(decisions_large_per_s),
        "floor_lookups_per_s": round(floor_per_s),
        "decide_vs_floor_ratio": round(floor_per_s / decisions_per_s, 1),
        "rerate_1m_s" if arguments.rerate_taps == 1_000_000 else "rerate_s": round(rerate_s, 3),
        "rerate_taps": len(rerate_rows),
        "rerate_cards": len(results),
        "rerate_taps_per_s": round(len(rerate_rows) / rerate_s),
        "taps": len(rows),
        "repeats": arguments.repeats,
        "compile_large_tariff_s": round(compile_large_s, 3),
        "large_tariff": {"networks": 100, "areas": 1000, "leg_rules": 10000},
    }
