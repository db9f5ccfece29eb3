"""Prometheus metrics of the serving path (prefix `recstream_`), exported at /metrics per replica."""

from prometheus_client import Counter, Gauge, Histogram

STAGE_LATENCY = Histogram("recstream_stage_latency_seconds", "latency per serving stage", ["stage"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
CANDIDATES = Histogram("recstream_stage_candidates", "items out of each stage", ["stage"],
                       buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000))
CANDIDATES_IN = Histogram("recstream_stage_candidates_in", "items into each stage", ["stage"],
                          buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000))
RANKER_BATCH = Histogram("recstream_ranker_batch_size", "requests scored together by a ranker replica",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128))
DEGRADED = Counter("recstream_degraded_total", "answers served with a fallback", ["stage", "reason"])
REQUESTS = Counter("recstream_requests_total", "recommend requests answered", ["variant"])
EXPLORED = Counter("recstream_explored_slots_total", "slate slots filled by exploration", ["variant"])
IMPRESSIONS_LOGGED = Counter("recstream_impression_log_sent_total", "impression records handed to Kafka")
IMPRESSIONS_DROPPED = Counter("recstream_impression_log_dropped_total", "impression records dropped", ["reason"])
MODEL_VERSION = Gauge("recstream_model_version_info", "served model versions (value 1)", ["variant", "stage", "version"])
BODY_TIMEOUTS = Counter("recstream_http_body_timeouts_total", "requests answered 408: body not received in time")
BREAKER_OPEN = Gauge("recstream_stage_breaker_open", "1 while a stage's circuit breaker is open (stage skipped)",
                     ["stage"])
BREAKER_TRIPS = Counter("recstream_stage_breaker_trips_total", "times a stage's circuit breaker opened", ["stage"])
