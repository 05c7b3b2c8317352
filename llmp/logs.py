"""Operator logs: one access line per request, engine/batch/webhook events; text or JSON.

`setup(settings, fmt="text", level="info")` (called by `llmp serve`) sends every `llmp.*`
record to stderr and to `$LLMP_HOME/logs/llmp.log` (rotated at LOG_BYTES, LOG_BACKUPS kept).
`event(logger, name, message, **fields)` logs one event: the text form is the message
followed by its fields as `key=value`; the JSON form is one object per line with `ts`,
`level`, `logger`, `event`, `msg` and the fields. Nothing logged here may hold a secret:
keys appear by id (`key_...`), never by their `sk-` value.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
from pathlib import Path
from typing import Any

#: a log file is rotated at this size; this many old ones are kept (llmp.log.1 ...)
LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

_HANDLER_TAG = "_llmp_handler"


def log_dir(home: Path) -> Path:
    return home / "logs"


def log_file(home: Path) -> Path:
    return log_dir(home) / "llmp.log"


def event(logger: logging.Logger, name: str, message: str, level: int = logging.INFO, *,
          json_fields: dict[str, Any] | None = None, **fields: Any) -> None:
    """Log event `name` (e.g. "access", "model.load") with structured `fields`;
    `json_fields` are what the text form already says in its message (JSON only)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"llmp_event": name, "llmp_fields": fields,
                                          "llmp_json": json_fields or {}})


def _value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return json.dumps(s) if (not s or any(c in s for c in ' ="')) else s


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "llmp_fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "event": getattr(record, "llmp_event", None) or "log",
            "msg": record.getMessage()}
        for extra in (getattr(record, "llmp_json", None), getattr(record, "llmp_fields", None)):
            out.update({k: v for k, v in (extra or {}).items() if v is not None})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(home: Path, fmt: str = "text", level: str = "info", *, stderr: bool = True,
          file: bool = True) -> Path | None:
    """Configure the `llmp` loggers (and aiohttp's errors) once for a serving process; returns
    the log file's path (None with `file=False`). Calling it again replaces what it set up."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"log level {level!r}: one of {', '.join(LEVELS)}")
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handlers: list[logging.Handler] = []
    if stderr:
        handlers.append(logging.StreamHandler())
    path = None
    if file:
        path = log_file(home)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"))
    for name in ("llmp", "aiohttp.server", "aiohttp.web"):
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(lvl if name == "llmp" else max(lvl, logging.WARNING))
        for h in handlers:
            setattr(h, _HANDLER_TAG, True)
            h.setFormatter(formatter)
            logger.addHandler(h)
        logger.propagate = False
    return path
