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
# Both count records the exactly-once scheme kept from being applied twice, at the two places it
# can: RESUME_SKIPPED at (re)assignment (the group's committed offset lags the offset stored with
# the state: a stop between the state write and the Kafka commit), REWINDS when the state turns
# out older than what this process applied (Redis restored from an older snapshot or AOF).
RESUME_SKIPPED = Counter("recstream_processor_resume_skipped_total",
                         "records past the group's committed offset that the stored offset skips on assignment "
                         "(applied before a stop that did not commit them)", ["processor"])
REWINDS = Counter("recstream_processor_rewinds_total",
                  "times the state was found older than the consumer position and re-read from the stored offsets",
                  ["processor"])
RETRIES = Counter("recstream_processor_retries_total", "state writes retried after a dependency error", ["processor"])

# Observing every event costs a few microseconds under the metric's lock: a real share of a
# 20k events/s budget. A systematic sample of at most this many per batch keeps the quantiles
# (every event is equally likely to be observed) at a fixed cost.
FRESHNESS_SAMPLES_PER_BATCH = 64


def observe_freshness(processor: str, ages_ms) -> None:
    """Record a batch's freshness (ms per event, numpy array) into FRESHNESS, sampled."""
    n = len(ages_ms)
    if not n:
        return
    stride = max(1, n // FRESHNESS_SAMPLES_PER_BATCH)
    hist = FRESHNESS.labels(processor)
    for a in ages_ms[::stride]:
        hist.observe(max(0.0, float(a)) / 1000)
