"""`make bench`: every benchmark, figures printed and written to benchmarks/results/*.json.

About 50 minutes on 2 cores.

ROLLGUARD_BENCH_FREEZE=1 adds the broker freezes of benchmarks/freeze.py (about 25 minutes).
"""

from __future__ import annotations

import logging
import os
import time

import structlog

from benchmarks import (
    demo_signing,
    freeze,
    fuzz,
    idle,
    ledger,
    scaleout,
    sdk,
    signing,
    statistics,
    storm,
    throughput,
    under_load,
)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    started = time.perf_counter()
    print(throughput.report(throughput.main()))  # 1, 100 and 1,000 models: about 6 minutes
    s = statistics.main()
    for stream, r in s["false_breaches"].items():
        print(
            f"false breaches ({stream}, {r['signals']} signals, {r['windows']} windows): "
            f"worst signal {r['worst_signal_per_10k_windows']:.1f} per 10k windows, "
            f"{r['breaches_total']} in total (target <= 1 per signal)"
        )
    for scenario, r in s["detection_delay"].items():
        print(
            f"delay {scenario}: detected {r['detected']}/{r['trials']}, median "
            f"{r['median_windows']} windows (max {r['max_windows']}) of {r['window_events']} "
            f"events; first window {r['first_window_pct']} %, within 2 {r['within_2_windows_pct']} %"
        )
    m = s["memory"]
    print(
        f"memory: RSS growth over {m['events']:,} events, {m['signals']} signals: "
        f"{m['per_signal_kib']} KiB per signal from event 100k on (steady state); from the "
        f"start, one more signal costs {m['marginal_per_signal_kib_from_start']} KiB "
        f"(60 against 6 signals; fixed costs and the per-model join state of "
        f"{m['join_state_entries']:,} predictions taken out; "
        f"{m['per_signal_kib_from_start']} KiB when all of it is divided by 60); without the "
        f"join: {m['without_join']['per_signal_kib']} KiB steady (target <= 256 KiB)"
    )
    print(f"correctness: {s['correctness']}")
    print(signing.report(signing.main()))
    print(sdk.report(sdk.main()))  # about 2 minutes
    print(ledger.report(ledger.main()))  # about 1 minute
    print(storm.report(storm.main()))  # about 2 minutes
    print(idle.report(idle.main()))  # about 3 minutes
    print(scaleout.report(scaleout.main()))  # about 2 minutes
    print(under_load.report(under_load.main()))  # about 10 minutes: 40 incidents
    print(demo_signing.report(demo_signing.main()))  # about 6 minutes: 10 whole demos
    print(fuzz.report(fuzz.main()))  # about 6 minutes: 5 x 100,000 malformed records
    if os.environ.get("ROLLGUARD_BENCH_FREEZE") == "1":  # about 25 minutes: asked for only
        f = freeze.main([])  # prints a line per freeze
        print(f"freeze: {len(f['freezes'])} freezes, {'ok' if f['ok'] else 'FAULTS'}")
    print(f"bench took {time.perf_counter() - started:.0f} s; results in benchmarks/results/")


if __name__ == "__main__":
    main()
