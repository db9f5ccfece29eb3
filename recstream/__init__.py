"""recstream: the small shared kernel (schemas, settings, errors, Kafka helpers).

The names below load on first use (PEP 562), so `import recstream.<module>` (the CLI's start-up
in particular) does not pay for pydantic and every schema up front.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RecstreamError": "recstream.errors",
    "InvalidEvent": "recstream.errors",
    "ConfigError": "recstream.errors",
    "Event": "recstream.events",
    "EventType": "recstream.events",
    "ImpressionLog": "recstream.events",
    "SlateItem": "recstream.events",
    "parse_event": "recstream.events",
    "Settings": "recstream.settings",
    "get_settings": "recstream.settings",
}

__all__ = list(_EXPORTS)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
