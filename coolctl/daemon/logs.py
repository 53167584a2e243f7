"""Structured logs on stderr: `key=value` text for people, or one JSON object per line.

Every record about a device carries `rack` and `device`. Under systemd the journal reads the
`<N>` priority prefix that `--log-format journal` adds.

Messages carry text from outside (operators' reasons, device and broker errors), so the text
formats escape control and bidi characters: a newline in a reason cannot start a line of its
own, and so cannot forge a `<2>` critical journal entry under another name. An exception's
traceback keeps its lines, each with the record's own priority in the journal.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from coolctl.ops.protocol import escape_text

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
            f" {key}={escape_text(str(getattr(record, key)))}"
            for key in _CONTEXT_KEYS
            if hasattr(record, key)
        )
        message = escape_text(record.getMessage())
        line = f"{stamp}Z {record.levelname} {record.name}{context} {message}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join(escape_text(part) for part in trace.splitlines())
        return line


class JournalFormatter(TextFormatter):
    """Text with the `<N>` priority prefix the systemd journal understands, no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = super().format(record).split(" ", 1)[1]
        # journald reads a priority at the start of every line: give each line the record's.
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


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
