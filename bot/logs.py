"""Logging set-up: one line per event (`component.action.outcome key=value`), phones and secrets masked.

An idle bot prints nothing. Third-party loggers that speak at INFO on every tick are held at
WARNING unless `logging.levels` says otherwise (`QUIET`): APScheduler logs two lines per job
run (every few seconds per job), aiohttp one per request, Alembic one per migration (the
serve command says what the migrations did in one line instead).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime

PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
SECRET_PARAM = re.compile(r"((?:access_token|corpsecret|secret|token|EncodingAESKey)=)[^&\s\"']+", re.IGNORECASE)
QUIET: Mapping[str, str] = {"apscheduler": "WARNING", "aiohttp.access": "WARNING", "alembic": "WARNING"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def mask(text: str) -> str:
    """Hide the middle of mainland phone numbers and the values of secret query parameters."""
    return SECRET_PARAM.sub(r"\1***", PHONE.sub(r"\1****\2", text))


class MaskingFormatter(logging.Formatter):
    """Text (`time LEVEL logger message`) or one JSON object a line: time, level, logger, message, exception."""

    def __init__(self, as_json: bool) -> None:
        super().__init__(TEXT_FORMAT)
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if not self.as_json:
            return mask(super().format(record))
        data = {
            "time": _iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return mask(json.dumps(data, ensure_ascii=False))


def _iso_time(record: logging.LogRecord) -> str:
    """ISO 8601 with milliseconds and the UTC offset, which log collectors parse without a pattern."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def configure_logging(
    level: str = "INFO", as_json: bool = False, levels: Mapping[str, str] | None = None
) -> None:
    """One handler on the root logger at `level`; `levels` (logger name → level) over the `QUIET` defaults."""
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, name_level in {**QUIET, **(levels or {})}.items():
        logging.getLogger(name).setLevel(name_level.upper())
    logging.captureWarnings(True)  # Python warnings as log records: in JSON mode every line stays JSON
