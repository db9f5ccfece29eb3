"""Prometheus metrics of the stream processors (prefix `recstream_`)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("recstream_processor_events_total", "events applied", ["processor"])
DUPLICATES = Counter("recstream_processor_duplicates_total", "redelivered records skipped (already applied)", ["processor"])
DLQ = Counter("recstream_processor_dlq_total", "records sent to the DLQ", ["processor"])
BATCH_LATENCY = Histogram("recstream_processor_batch_write_seconds", "state write latency per batch", ["processor"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
FRESHNESS = Histogram("recstream_processor_freshness_seconds", "Kafka record timestamp -> state visible in Redis",
                      ["processor"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAG = Gauge("recstream_processor_consumer_lag", "records behind the log end, per partition", ["processor", "partition"])
RETRIES = Counter("recstream_processor_retries_total", "state writes retried after a dependency error", ["processor"])
