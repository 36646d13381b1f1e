"""Structured logging: one line per notable event, JSON by default, never a secret or a body."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

logger = logging.getLogger("parley")


class _Level:
    """Whether debug lines are on, as a plain attribute: per-connection call sites test it
    before building their fields (configure sets it)."""

    debug = False


LEVEL = _Level()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    LEVEL.debug = logger.isEnabledFor(logging.DEBUG)
    logger.propagate = False
    logging.getLogger("picows").setLevel(logging.WARNING)


def log(level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def info(event: str, **fields: Any) -> None:
    log(logging.INFO, event, **fields)


def warning(event: str, **fields: Any) -> None:
    log(logging.WARNING, event, **fields)


def debug(event: str, **fields: Any) -> None:
    log(logging.DEBUG, event, **fields)


def error(event: str, **fields: Any) -> None:
    logger.error(event, extra={"fields": fields}, exc_info=True)  # noqa: LOG014 - called in handlers


class Refusals:
    """Lines that may come in floods (refusals, a failing store), rate-limited: at most
    `per_second` a second are written at `level`; the rest are counted and reported in one
    `refusals suppressed` line when lines flow again, so a flood cannot fill the disk and the
    operator still learns how many there were."""

    def __init__(
        self, per_second: int = 20, clock: Any = time.monotonic, level: int = logging.INFO
    ) -> None:
        self.per_second = per_second
        self.level = level
        self._clock = clock
        self._second = 0
        self._written = 0
        self._suppressed = 0

    def log(self, event: str, **fields: Any) -> None:
        if not logger.isEnabledFor(self.level):
            return
        second = int(self._clock())
        if second != self._second:
            if self._suppressed:
                log(
                    self.level,
                    "refusals suppressed",
                    count=self._suppressed,
                    seconds=second - self._second,
                )
            self._second, self._written, self._suppressed = second, 0, 0
        if self._written >= self.per_second:
            self._suppressed += 1
            return
        self._written += 1
        log(self.level, event, **fields)


REFUSALS = Refusals()


def refused(event: str, **fields: Any) -> None:
    """One info line for a refusal of something a client sent (`Refusals` limits the rate)."""
    REFUSALS.log(event, **fields)
