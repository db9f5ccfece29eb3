"""recstream: the small shared kernel (schemas, settings, errors, Kafka helpers)."""

from recstream.errors import RecstreamError, InvalidEvent, ConfigError
from recstream.events import Event, EventType, ImpressionLog, SlateItem, parse_event
from recstream.settings import Settings, get_settings

__all__ = [
    "RecstreamError",
    "InvalidEvent",
    "ConfigError",
    "Event",
    "EventType",
    "ImpressionLog",
    "SlateItem",
    "parse_event",
    "Settings",
    "get_settings",
]

__version__ = "0.1.0"
