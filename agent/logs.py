"""Structured logging: every line is an event name plus key=value fields (logfmt) or JSON.

Both formatters pass the finished line, traceback included, through :func:`agent.redact.redact`:
the callers redact what they know to be risky, this catches what they did not think of."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

from agent.redact import redact


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, event, extra={"fields": fields})


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        line = " ".join(f"{k}={_quote(v)}" for k, v in parts.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
               "event": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, ensure_ascii=False, default=str))


def _quote(value) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="'):
        return json.dumps(text, ensure_ascii=False)
    return text


def setup_logging(level: str = "INFO", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    log_uncaught_exceptions()


def log_uncaught_exceptions() -> None:
    """Python prints an exception nobody caught (a thread's, the main one's) straight to stderr,
    past the formatters and their redaction; send it through the log instead."""
    log = logging.getLogger("agent")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:
            log.error("thread_crashed", exc_info=args.exc_value,  # carries its type and traceback
                      extra={"fields": {"thread": args.thread.name if args.thread else "?"}})

    def main_hook(exc_type, exc_value, exc_traceback) -> None:
        if issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C is no crash
            sys.__excepthook__(exc_type, exc_value, exc_traceback)
            return
        log.critical("crashed", exc_info=(exc_type, exc_value, exc_traceback), extra={"fields": {}})

    threading.excepthook = thread_hook
    sys.excepthook = main_hook
