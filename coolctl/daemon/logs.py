"""Structured logs on stderr: `key=value` text for people, or one JSON object per line.

Every record about a device carries `rack` and `device`. Under systemd the journal reads the
`<N>` priority prefix that `--log-format journal` adds.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_CONTEXT_KEYS = ("rack", "device", "loop", "point")
_JOURNAL_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class TextFormatter(logging.Formatter):
    """`2026-11-27T23:08:12Z WARNING coolctl.drivers.modbus rack=r01 device=cdu1 message`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        context = "".join(
            f" {key}={getattr(record, key)}" for key in _CONTEXT_KEYS if hasattr(record, key)
        )
        line = f"{stamp}Z {record.levelname} {record.name}{context} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JournalFormatter(TextFormatter):
    """Text with the `<N>` priority prefix the systemd journal understands, no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>" + super().format(record).split(" ", 1)[1]


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(log_format: str = "text", level: str = "INFO") -> None:
    formatter: logging.Formatter = {
        "json": JsonFormatter(),
        "journal": JournalFormatter(),
    }.get(log_format, TextFormatter())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("coolctl").setLevel(level)
    # pymodbus logs every failed connect at ERROR; coolctl logs those once per change of state.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
