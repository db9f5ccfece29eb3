"""Start-up noise a user cannot act on (issue 9, defect 7): librdkafka's transient retries and
Ray's INFO notices are kept out of the demo's output; real errors are not."""

from __future__ import annotations

import logging
import subprocess
import sys

from recstream import kafka_io
from recstream.settings import Settings


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("recstream.librdkafka", level, __file__, 1, msg, (), None)


def test_transient_librdkafka_retries_are_dropped_and_errors_kept():
    log = kafka_io.LIBRDKAFKA_LOG
    assert not log.filter(_record(logging.WARNING, "GETPID [p#producer-1] [thrd:main]: Failed to acquire idempotence "
                                                   "PID from broker 127.0.0.1:19092/1: Broker: Coordinator load in "
                                                   "progress: retrying"))
    assert log.filter(_record(logging.ERROR, "FAIL [p#producer-1]: 127.0.0.1:19092/1: Connect failed: retrying"))
    assert log.filter(_record(logging.WARNING, "CONFWARN: Configuration property x is deprecated"))


def test_retries_show_when_the_librdkafka_logger_is_at_debug():
    log = kafka_io.LIBRDKAFKA_LOG
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        assert log.filter(_record(logging.WARNING, "Coordinator load in progress: retrying"))
    finally:
        log.setLevel(old)


def test_the_bulk_producer_logs_through_python_logging(monkeypatch):
    import confluent_kafka

    seen = {}
    monkeypatch.setattr(confluent_kafka, "Producer", lambda cfg: seen.update(cfg) or object())
    kafka_io.make_bulk_producer(Settings(kafka_bootstrap="127.0.0.1:1"))
    assert seen["logger"] is kafka_io.LIBRDKAFKA_LOG


def test_ray_info_notices_stay_quiet_after_ray_is_imported():
    code = ("import logging\n"
            "from recstream.logs import setup_logging\n"
            "setup_logging()\n"
            "import ray\n"
            "assert logging.getLogger('ray.serve').getEffectiveLevel() >= logging.WARNING, "
            "logging.getLogger('ray.serve').getEffectiveLevel()\n"
            "assert logging.getLogger('recstream.cli').getEffectiveLevel() == logging.INFO\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_log_handler_follows_sys_stderr_after_the_old_one_closes(monkeypatch):
    import io

    from recstream.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging()
        first.close()  # what a CliRunner or a capture does when its command ends
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("recstream.test").warning("after the first stream closed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    out = second.getvalue()
    assert "WARNING recstream.test: after the first stream closed" in out and "Logging error" not in out, out
