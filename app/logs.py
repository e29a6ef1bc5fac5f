"""Structured logs: one JSON object per line, with event fields where they apply."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

FIELDS_ATTR = "nearline_fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": getattr(record, "nearline_msg", None) or record.getMessage(),
        }
        doc.update(getattr(record, FIELDS_ATTR, {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def use_json_logs() -> None:
    """Switch every handler installed so far (Faust's included) to JSON lines."""
    fmt = JsonFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(fmt)


def log_fields(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """A message plus key=value fields: `key=value` in text logs, keys in JSON logs."""
    text = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in fields.items())
    logger.log(level, "%s %s", msg, text, extra={FIELDS_ATTR: fields, "nearline_msg": msg})
