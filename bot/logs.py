"""Logging set-up: one line per event (`component.action.outcome key=value`), phones and secrets masked."""

from __future__ import annotations

import json
import logging
import re

PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
SECRET_PARAM = re.compile(r"((?:access_token|corpsecret|secret|token|EncodingAESKey)=)[^&\s\"']+", re.IGNORECASE)


def mask(text: str) -> str:
    """Hide the middle of mainland phone numbers and the values of secret query parameters."""
    return SECRET_PARAM.sub(r"\1***", PHONE.sub(r"\1****\2", text))


class MaskingFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if not self.as_json:
            return mask(super().format(record))
        data = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return mask(json.dumps(data, ensure_ascii=False))


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
