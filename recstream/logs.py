"""Logging set-up: human-readable by default, one JSON object per line with --json-logs."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted. A plain StreamHandler keeps the
    stream it was made with, and after a test runner or CliRunner closes that stream every later
    record from a still-running thread ends in "Logging error ... I/O operation on closed file"."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO, json_lines: bool = False) -> None:
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every connection at INFO; keep our own INFO lines readable.
    for noisy in ("kafka", "urllib3", "httpx", "filelock", "ray", "feast"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # `import ray` sets the "ray" logger back to INFO with its own handler, so the level above
    # does not survive it; levels on its children do ("Started Serve in namespace ...", "Deploying
    # app ...", "Application ... is ready at ..." at INFO: the CLI prints the URL itself).
    for noisy in ("ray.serve", "ray._private", "ray.util", "ray.dashboard"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # Its event-loop watchdog warns about slow batches under load; not actionable for users.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
