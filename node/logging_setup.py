"""Structured logs: one JSON object per line, to stderr and to <data_dir>/node.log.

Why JSON lines: the scenario runner, the tests and `grep`/`jq` all read node logs; a fixed shape
({"ts", "level", "node", "event", "fields"}) lets them find "stopped" or "upgrade_executed" without
parsing prose. `event` is the log call's message (a short snake_case name by convention) and `fields`
its structured details, passed as `extra={"fields": {...}}` or through `log_event`.

The file is size-bounded (rotating) so a chatty node cannot fill its disk. Configuration is on the
root logger: this is a process of its own, and aiohttp's or pysyncobj's records come out in the same
shape. aiohttp's access log is kept at warning level (one line per request would drown the rest).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

from node.limits import NODE_LOG_FIELD_TEXT_LENGTH_MAX, NODE_LOG_FILE_BACKUPS_MAX, NODE_LOG_FILE_SIZE_MAX_BYTES

LOG_FILE_NAME = "node.log"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return value if len(value) <= NODE_LOG_FIELD_TEXT_LENGTH_MAX else value[:NODE_LOG_FIELD_TEXT_LENGTH_MAX] + "..."
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item) for item in value]
    return _jsonable(str(value))


class JsonLineFormatter(logging.Formatter):
    """Formats a record as {"ts", "level", "node", "event", "fields"} on one line."""

    def __init__(self, node_id: str, clock: Any = None) -> None:
        super().__init__()
        self.node_id = node_id
        self.clock = clock  # node/clock.py NodeClock: `ts` is the node's time of day (skewed with it in the testbed)

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", None) or {})
        if record.name not in ("synapse", "root"):
            fields.setdefault("logger", record.name)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        wall_s = record.created if self.clock is None else self.clock.shift_s(record.created)
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_s)) + f".{int(wall_s % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "node": self.node_id,
            "event": record.getMessage(),
            "fields": _jsonable(fields),
        }
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def configure_logging(*, node_id: str, data_dir: Path | None, level: str = "info", clock: Any = None) -> logging.Logger:
    """Send every record of this process to stderr and (if given) <data_dir>/node.log as JSON lines,
    dated by `clock` (the node's NodeClock) when given."""
    formatter = JsonLineFormatter(node_id, clock)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if data_dir is not None:
        handlers.append(logging.handlers.RotatingFileHandler(
            Path(data_dir) / LOG_FILE_NAME, maxBytes=NODE_LOG_FILE_SIZE_MAX_BYTES, backupCount=NODE_LOG_FILE_BACKUPS_MAX, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return logging.getLogger("synapse")


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """`log_event(logger, logging.INFO, "started", api_url=...)` -> one JSON line with those fields."""
    logger.log(level, event, extra={"fields": fields})
