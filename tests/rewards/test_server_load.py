"""benchmarks/reward_server_load.py, small: every good request scored right, every bad one 4xx,
the server alive and /health answering throughout."""

from __future__ import annotations

from benchmark_modules import load_benchmark

load = load_benchmark("reward_server_load")


def test_a_small_load_of_good_and_bad_requests():
    # 4 clients × 10 requests: every kind of request at least 3 times, with 1 worker and a
    # queue of 1, so that some requests find the server full.
    report = load.run_load(clients=4, requests=10, workers=1, queue=1, max_seconds=120)
    assert report["passed"], report
    assert report["not_sent"] == 0 and report["alive_at_end"]
    assert report["good"] == {"sent": 8, "scored_right": 8, "wrong": 0}
    assert report["bad"] == {"sent": 32, "got_4xx": 32, "not_4xx": 0}
    assert set(report["status_by_kind"]["pixel_bomb"]) == {"413"}
    assert set(report["status_by_kind"]["deep_json"]) == {"400"}
    assert report["health"]["failed"] == 0
    rss = report["rss_mb"]
    assert 0 < rss["before"] <= rss["peak"] and rss["after"] > 0
