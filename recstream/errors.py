"""Errors shared by every package. Each names the object and its scope."""

from __future__ import annotations


class RecstreamError(Exception):
    """Base class of every recstream error. The `recstream` command prints one as `error: <message>`
    (no traceback) and exits with its `exit_code`."""

    exit_code = 1


class ConfigError(RecstreamError):
    """A setting is invalid; the message carries the offending values."""


class SettingsError(ConfigError):
    """RECSTREAM_* environment settings that do not validate (a usage error: exit status 2)."""

    exit_code = 2


class InvalidEvent(RecstreamError):
    """A Kafka record that does not parse or validate as an Event.

    Args:
        reason: what is wrong, naming the field where there is one.
        raw: the original bytes, kept so the DLQ record loses nothing.
    """

    def __init__(self, reason: str, raw: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class StackError(RecstreamError):
    """The local stack (Kafka, Redis) could not be started or reached."""


class MigrationRefused(RecstreamError):
    """A Redis state migration (`recstream redis migrate`) refused to start or to go on: source or
    target in the wrong layout, keys it cannot place, a target already holding state, processors
    still running. The message names the values; nothing was written unless it says so."""
