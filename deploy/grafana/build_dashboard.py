"""Generate recstream-dashboard.json (Grafana 10+ schema) from the panel list below.

Run `python deploy/grafana/build_dashboard.py` after editing; tests check that every metric
the dashboard queries is one the code exports.
"""

import json
from pathlib import Path

PANELS = [
    # (title, unit, [(expr, legend)])
    ("Recommend latency p50/p99 by stage", "s", [
        ('histogram_quantile(0.5, sum by (le, stage) (rate(recstream_stage_latency_seconds_bucket[1m])))', "p50 {{stage}}"),
        ('histogram_quantile(0.99, sum by (le, stage) (rate(recstream_stage_latency_seconds_bucket[1m])))', "p99 {{stage}}")]),
    ("Requests/s by variant", "reqps", [('sum by (variant) (rate(recstream_requests_total[1m]))', "{{variant}}")]),
    ("Degraded answers/s by reason", "reqps", [('sum by (stage, reason) (rate(recstream_degraded_total[1m]))', "{{stage}} {{reason}}")]),
    ("Candidates in/out per stage (p50)", "short", [
        ('histogram_quantile(0.5, sum by (le, stage) (rate(recstream_stage_candidates_in_bucket[5m])))', "in {{stage}}"),
        ('histogram_quantile(0.5, sum by (le, stage) (rate(recstream_stage_candidates_bucket[5m])))', "out {{stage}}")]),
    ("Ranker batch size (mean) and explored slots/s", "short", [
        ('sum(rate(recstream_ranker_batch_size_sum[1m])) / sum(rate(recstream_ranker_batch_size_count[1m]))', "mean batch"),
        ('sum by (variant) (rate(recstream_explored_slots_total[1m]))', "explored {{variant}}")]),
    ("Impression log sent vs dropped", "ops", [
        ('rate(recstream_impression_log_sent_total[1m])', "sent"),
        ('sum by (reason) (rate(recstream_impression_log_dropped_total[1m]))', "dropped {{reason}}")]),
    ("Processor events/s", "ops", [('sum by (processor) (rate(recstream_processor_events_total[1m]))', "{{processor}}")]),
    ("Consumer lag", "short", [('sum by (processor) (recstream_processor_consumer_lag)', "{{processor}}")]),
    ("Feature freshness p99 (event -> online)", "s", [
        ('histogram_quantile(0.99, sum by (le, processor) (rate(recstream_processor_freshness_seconds_bucket[1m])))', "{{processor}}")]),
    ("Batch write latency p99", "s", [
        ('histogram_quantile(0.99, sum by (le, processor) (rate(recstream_processor_batch_write_seconds_bucket[1m])))', "{{processor}}"),
        ('histogram_quantile(0.99, sum by (le) (rate(recstream_bse_update_seconds_bucket[1m])))', "bse update"),
        ('histogram_quantile(0.99, sum by (le, target) (rate(recstream_feature_publish_seconds_bucket[1m])))', "publish {{target}}")]),
    ("DLQ records/s and retries", "ops", [
        ('sum by (processor) (rate(recstream_processor_dlq_total[5m]))', "dlq {{processor}}"),
        ('sum by (processor) (rate(recstream_processor_retries_total[5m]))', "retries {{processor}}"),
        ('sum by (processor) (rate(recstream_processor_duplicates_total[5m]))', "redelivered {{processor}}")]),
    ("Model versions served", "short", [('recstream_model_version_info', "{{variant}} {{stage}} {{version}}")]),
]


def build() -> dict:
    panels = []
    for n, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": n + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + k), "expr": expr, "legendFormat": legend} for k, (expr, legend) in enumerate(targets)],
        })
    return {
        "uid": "recstream-overview", "title": "recstream overview", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "tags": ["recstream"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("recstream-dashboard.json")
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")
