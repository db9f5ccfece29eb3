"""benchmarks/serving.py's report: renders the committed result file and a result of the current keys."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.proc_stats import cpu_s
from benchmarks.serving import TOPOLOGIES, markdown

REPORT = Path(__file__).resolve().parents[3] / "reports" / "serving.json"


def _current_result() -> dict:
    res = {"n_items": 100, "candidate_top_k": 10, "coarse_top_k": 5, "k": 2, "duration_s": 1.0, "concurrency": 2,
           "half_load_rps": 50.0, "ranker_mean_batch": 3.5, "ranker_ms_per_request_200": 6.0, "ranker_us_per_candidate": 30.0,
           "ann_recall_at_1000_vs_exact": 0.9, "exact_top1000_ms": 1.0, "hnsw_top1000_ms": 1.0,
           "in_process_inputs_ms": 1.0, "in_process_retrieval_ms": 1.5, "in_process_coarse_ms": 2.5, "in_process_ranker_ms": 7.0,
           "in_process_request_ms": 12.0, "in_process_coarse_ms_eager": 3.5, "in_process_ranker_ms_ranker_listwise": 7.1, "ranker_batch8_speedup": 1.3,
           "ranker_batch8_ms": 40.0, "user_features_feast_ms": 5.0, "user_features_feast_wall_ms": 5.5,
           "user_features_fast_ms": 0.2, "user_features_fast_wall_ms": 0.3}
    for i, name in enumerate(["bare_single", "bare_three_hop", *TOPOLOGIES]):
        res.update({f"{name}_max_rps": 100.0 / (i + 1), f"{name}_p50_ms_at_max": 10.0, f"{name}_errors": 0,
                    f"{name}_cpu_share_ingress": 0.9, f"{name}_cpu_share_proxy": 0.2, f"{name}_cpu_share_client": 0.3})
        if name != "bare_three_hop":
            res.update({f"{name}_half_load_rps": 50.0 / (i + 1), f"{name}_p50_ms_at_half_load": 9.0,
                        f"{name}_p99_ms_at_half_load": 20.0 + i})
        if name != "bare_single":
            res[f"{name}_max_rps_ratio_vs_bare"] = 1.0 / (i + 1)
            if name != "bare_three_hop":
                res[f"{name}_p99_ratio_vs_bare"] = (20.0 + i) / 20.0
    res.update({"shipped_topology": "fused_inproc_ranker", "shipped_max_rps_ratio_vs_bare": 0.25,
                "shipped_p99_ratio_vs_bare": 1.15, "shipped_ranker_mean_batch": 5.5})
    return res


def test_report_renders_current_and_committed_results():
    text = markdown(_current_result())
    assert "| real pipeline, fused, ranker in the ingress, 2 ingress replicas | 16.7 | 0.17 |" in text
    assert "12.00 = 1.00 + 1.50 + 2.50 + 7.00" in text
    assert "| shipped layout (real pipeline, fused, ranker in the ingress): max throughput / bare (goal >= 0.5) | 0.25 |" in text and "half of each topology's own maximum" in text
    committed = json.loads(REPORT.read_text())
    assert "# Serving benchmark" in markdown(committed)


def test_process_cpu_counter_sees_this_process_work():
    before = cpu_s([os.getpid()])
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    assert cpu_s([os.getpid()]) - before >= 0.15
    assert cpu_s([2**22 + 12345]) == 0.0  # no such process: counts nothing
