"""Asynchronous impression logger: a bounded buffer drained to Kafka by a background thread.

`log()` never blocks the response: when the buffer is full (Kafka slow or down) the record is
dropped and counted (`recstream_impression_log_dropped_total`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from recstream.events import ImpressionLog
from services import metrics as m

log = logging.getLogger(__name__)


class ImpressionLogger:
    def __init__(self, bootstrap: str, topic: str, buffer_max: int = 10_000, producer_factory=None):
        self.bootstrap = bootstrap
        self.topic = topic
        self._q: queue.Queue[ImpressionLog] = queue.Queue(maxsize=buffer_max)
        self._producer_factory = producer_factory
        self._producer = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="impression-log", daemon=True)
        self._thread.start()

    def log(self, record: ImpressionLog) -> bool:
        try:
            self._q.put_nowait(record)
            return True
        except queue.Full:
            m.IMPRESSIONS_DROPPED.labels("buffer_full").inc()
            return False

    def _make_producer(self):
        if self._producer_factory is not None:
            return self._producer_factory()
        return _LibrdkafkaProducer(self.bootstrap)

    def _drain(self) -> None:
        # the producer now, while the replica starts: making it imports the Kafka client libraries
        # (seconds of CPU, holding the GIL), which the first served requests would otherwise wait out
        try:
            self._producer = self._make_producer()
        except Exception as e:  # Kafka not there yet: the loop below retries when a record comes
            log.warning("impression log: Kafka unavailable at start (%s); retrying with the first record", e)
        while not self._stop.is_set() or not self._q.empty():
            try:
                rec = self._q.get(timeout=0.2)
            except queue.Empty:
                if isinstance(self._producer, _LibrdkafkaProducer):
                    self._producer.poll()  # delivery reports of the last records while idle
                continue
            while self._producer is None and not self._stop.is_set():
                try:
                    self._producer = self._make_producer()
                except Exception as e:
                    log.warning("impression log: Kafka unavailable (%s); retrying", e)
                    time.sleep(1.0)
            if self._producer is None:
                m.IMPRESSIONS_DROPPED.labels("shutdown").inc()
                continue
            try:
                self._producer.send(self.topic, key=rec.user_id, value=rec.to_bytes())
            except Exception as e:
                log.warning("impression log: send failed (%s); dropping request %s", e, rec.request_id)
                m.IMPRESSIONS_DROPPED.labels("send_error").inc()

    def flush(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._q.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._producer is not None:
            self._producer.flush(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        self.flush()
        self._stop.set()
        self._thread.join(timeout=5)
        if self._producer is not None:
            self._producer.close()


class _LibrdkafkaProducer:
    """Idempotent acks=all producer on librdkafka (about a tenth of kafka-python's CPU per record,
    which the serving replica would otherwise pay per request); counts records on delivery."""

    def __init__(self, bootstrap: str):
        from recstream.kafka_io import make_bulk_producer
        from recstream.settings import Settings

        self._p = make_bulk_producer(Settings(kafka_bootstrap=bootstrap), **{"client.id": "recstream-impressions",
                                                                            "linger.ms": 20})

    @staticmethod
    def _delivered(err, msg) -> None:
        if err is None:
            m.IMPRESSIONS_LOGGED.inc()
        else:
            log.warning("impression log: delivery failed (%s)", err)
            m.IMPRESSIONS_DROPPED.labels("send_error").inc()

    def send(self, topic: str, key: str, value: bytes) -> None:
        self._p.produce(topic, key=key.encode("utf-8"), value=value, on_delivery=self._delivered)
        self._p.poll(0)  # serve delivery callbacks

    def poll(self) -> None:
        self._p.poll(0)

    def flush(self, timeout: float = 10.0) -> None:
        self._p.flush(timeout)

    def close(self) -> None:
        self._p.flush(10)
