"""The ledger: one row per request (ok, error or cancelled), written in batches off the hot path.

- `Ledger`: the small storage interface (`write(records)`, `summary(...)`, `records(...)`, `close()`),
  with `SQLiteLedger` (embedded, WAL) and `PostgresLedger` (psycopg 3, for many replicas).
- `LedgerMeter`: a `Meter` whose `record()` only appends to a bounded in-memory buffer; a
  writer thread flushes every `flush_interval_s` or `batch_size` records, retries with backoff
  while the ledger is down, and `aclose()` / `close()` flush what is left.

Writes are idempotent (the request id is the primary key; a replayed batch is ignored), so a
batch whose commit succeeded but whose acknowledgement was lost is never counted twice.

>>> meter = LedgerMeter(open_ledger("ledger.db"))            # doctest: +SKIP
>>> Router(policy, meters=[meter])                            # doctest: +SKIP
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import collections
import contextlib
import logging
import operator
import os
import re
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import orjson

from router.core.meter import Meter
from router.core.response import RouterInfo

__all__ = ["GROUPINGS", "Ledger", "LedgerMeter", "LedgerRecord", "PostgresLedger", "SQLiteLedger",
           "SummaryRow", "open_ledger"]

log = logging.getLogger("router.metering.ledger")

TABLE = "router_requests"
GROUPINGS = ("tenant", "route", "provider", "model", "task")


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One request as the ledger stores it (column order = field order)."""

    id: str
    ts: float                       # Unix seconds the request arrived
    tenant: str | None
    task: str
    task_source: str
    route: str
    provider: str | None
    model: str | None
    upstream_model: str | None
    region: str | None
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    usage_estimated: bool
    cost_usd: float
    reference_cost_usd: float | None
    latency_s: float
    ttft_s: float | None
    status: str                     # ok | error | cancelled
    error: str | None
    attempts: str                   # JSON list of {provider, model, outcome, latency_s, status, error}

    @classmethod
    def from_info(cls, info: RouterInfo) -> LedgerRecord:
        attempts = orjson.dumps(info.attempts).decode()  # orjson writes dataclasses as asdict() would
        return cls(info.request_id, info.created, info.tenant, info.task, info.task_source, info.route,
                   info.provider, info.model, info.upstream_model, info.region, info.prompt_tokens,
                   info.completion_tokens, info.reasoning_tokens, info.usage_estimated, info.cost_usd,
                   info.reference_cost_usd, info.latency_s, info.ttft_s, info.status,
                   info.error[:1000] if info.error else None, attempts)


COLUMNS = tuple(f.name for f in fields(LedgerRecord))
_row = operator.attrgetter(*COLUMNS)  # a record as a row tuple; what astuple() gives, without its deep copy


@dataclass(frozen=True, slots=True)
class SummaryRow:
    key: str | None                 # the grouping value (None: not set, e.g. no tenant)
    bucket: float | None            # start of the time bucket (Unix seconds) when bucketed
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost_usd: float
    reference_cost_usd: float       # over requests with a reference price
    savings_usd: float              # reference cost - actual cost, over the same requests

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Ledger(abc.ABC):
    """Storage for `LedgerRecord`s. Methods are blocking: call them from a thread."""

    placeholder = "?"

    @abc.abstractmethod
    def write(self, records: Sequence[LedgerRecord]) -> None:
        """Store `records` in one transaction; ignore ids already stored. Raise on failure."""

    @abc.abstractmethod
    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _bucket_sql(self, seconds: int) -> str: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def _where(self, since: float | None, until: float | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if since is not None:
            clauses.append(f"ts >= {self.placeholder}")
            params.append(since)
        if until is not None:
            clauses.append(f"ts < {self.placeholder}")
            params.append(until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def summary(self, *, by: str | None = None, since: float | None = None, until: float | None = None,
                bucket_s: int | None = None) -> list[SummaryRow]:
        """Requests, errors, tokens, cost and savings per `by` value (and per time bucket)."""
        if by is not None and by not in GROUPINGS:
            raise ValueError(f"cannot group by '{by}': use one of {', '.join(GROUPINGS)}")
        key = by or "NULL"
        bucket = self._bucket_sql(bucket_s) if bucket_s else "NULL"
        where, params = self._where(since, until)
        sql = (f"SELECT {key}, {bucket}, COUNT(*), SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END), "
               "SUM(prompt_tokens), SUM(completion_tokens), SUM(reasoning_tokens), SUM(cost_usd), "
               "SUM(COALESCE(reference_cost_usd, 0)), "
               "SUM(CASE WHEN reference_cost_usd IS NULL THEN 0 ELSE reference_cost_usd - cost_usd END) "
               f"FROM {TABLE}{where} GROUP BY 1, 2 ORDER BY 2, 1")
        out = []
        for row in self._query(sql, params):
            out.append(SummaryRow(row[0], float(row[1]) if row[1] is not None else None, int(row[2]),
                                  int(row[3] or 0), int(row[4] or 0), int(row[5] or 0), int(row[6] or 0),
                                  float(row[7] or 0), float(row[8] or 0), float(row[9] or 0)))
        return out

    def records(self, *, since: float | None = None, until: float | None = None) -> list[LedgerRecord]:
        where, params = self._where(since, until)
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} ORDER BY ts, id", params)
        return [LedgerRecord(*(bool(v) if c == "usage_estimated" else v for c, v in zip(COLUMNS, r, strict=True)))
                for r in rows]

    def get(self, request_id: str) -> LedgerRecord | None:
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE id = {self.placeholder}",
                           [request_id])
        if not rows:
            return None
        return LedgerRecord(*(bool(v) if c == "usage_estimated" else v
                              for c, v in zip(COLUMNS, rows[0], strict=True)))


def _schema(text_type: str, float_type: str, bool_type: str, json_type: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id TEXT PRIMARY KEY,
    ts {float_type} NOT NULL,
    tenant TEXT,
    task TEXT NOT NULL,
    task_source TEXT NOT NULL,
    route TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    upstream_model TEXT,
    region TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    usage_estimated {bool_type} NOT NULL,
    cost_usd {float_type} NOT NULL,
    reference_cost_usd {float_type},
    latency_s {float_type} NOT NULL,
    ttft_s {float_type},
    status {text_type} NOT NULL,
    error TEXT,
    attempts {json_type} NOT NULL
)"""


_INDEXES = (f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_tenant_ts ON {TABLE} (tenant, ts)")


class SQLiteLedger(Ledger):
    """An embedded ledger in one SQLite file: WAL journal, `synchronous=FULL` (a committed batch survives
    a power cut), one connection shared under a lock."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(_schema("TEXT", "REAL", "INTEGER", "TEXT"))
            for stmt in _INDEXES:
                self._conn.execute(stmt)

    def write(self, records: Sequence[LedgerRecord]) -> None:
        sql = f"INSERT OR IGNORE INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, [_row(r) for r in records])
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, list(params)).fetchall()

    def _bucket_sql(self, seconds: int) -> str:
        return f"(CAST(ts / {int(seconds)} AS INTEGER) * {int(seconds)})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresLedger(Ledger):
    """A shared ledger in PostgreSQL (psycopg 3). `schema` (or ``?schema=`` in the URL) selects and
    creates a schema. The connection is re-opened after any failure."""

    placeholder = "%s"

    def __init__(self, url: str, *, schema: str | None = None, connect_timeout_s: int = 5):
        import psycopg  # the one module that imports psycopg

        self._psycopg = psycopg
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query)
        for k, v in query:
            if k == "schema":
                schema = schema or v
        rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
        self.url = urllib.parse.urlunsplit(parts._replace(query=rest))
        if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise ValueError(f"invalid schema name '{schema}'")
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None   # connected on first use: a ledger that is down does not stop a start

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            conn = self._psycopg.connect(self.url, connect_timeout=self.connect_timeout_s)
            try:
                with conn.transaction():
                    if self.schema:
                        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                        conn.execute(f'SET search_path TO "{self.schema}"')
                    conn.execute(_schema("TEXT", "DOUBLE PRECISION", "BOOLEAN", "JSONB"))
                    for stmt in _INDEXES:
                        conn.execute(stmt)
            except BaseException:
                conn.close()
                raise
            if self.schema:
                conn.execute(f'SET search_path TO "{self.schema}"')
                conn.commit()
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def write(self, records: Sequence[LedgerRecord]) -> None:
        sql = (f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
               "ON CONFLICT (id) DO NOTHING")
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(sql, [_row(r) for r in records])
            except Exception:
                self._drop()
                raise

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(sql, list(params))
                    rows = cur.fetchall()
            except Exception:
                self._drop()
                raise
        # JSONB comes back decoded; the interface hands out the JSON text
        return [tuple(orjson.dumps(v).decode() if isinstance(v, list) else v for v in r) for r in rows]

    def _bucket_sql(self, seconds: int) -> str:
        return f"(FLOOR(ts / {int(seconds)}) * {int(seconds)})"

    def close(self) -> None:
        with self._lock:
            self._drop()


def open_ledger(target: str | os.PathLike[str], **kwargs: Any) -> Ledger:
    """``postgresql://...`` opens a `PostgresLedger`; ``sqlite:///path`` or a plain path a `SQLiteLedger`."""
    target = os.fspath(target)
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(target, **kwargs)
    if target.startswith("sqlite://"):  # SQLAlchemy style: sqlite:///relative.db, sqlite:////abs/path.db
        target = target[len("sqlite://"):]
        target = target[1:] if target.startswith("/") else target
    return SQLiteLedger(target, **kwargs)


# ----------------------------------------------------------------------------- the writer


class LedgerMetrics(Protocol):
    """What a `LedgerMeter` reports about itself (`PrometheusMeter` implements it)."""

    def ledger_pending(self, n: int) -> None: ...

    def ledger_error(self) -> None: ...

    def ledger_dropped(self, n: int) -> None: ...


class LedgerMeter(Meter):
    """Batches finished requests into a `Ledger` from a writer thread.

    `record()` converts the request to a `LedgerRecord` and appends it to a buffer: no I/O on the
    event loop. The writer flushes when `batch_size` records are waiting or `flush_interval_s`
    after the oldest unflushed one arrived. While the ledger fails, records stay in the buffer
    and the batch is retried with exponential backoff (up to `retry_max_s`); when more than
    `max_pending` are waiting the **oldest** are dropped and counted. `metrics` (e.g. a
    `PrometheusMeter`) is told `ledger_pending(n)`, `ledger_error()` and `ledger_dropped(n)`.
    """

    def __init__(self, ledger: Ledger, *, flush_interval_s: float = 0.2, batch_size: int = 500,
                 max_pending: int = 100_000, retry_max_s: float = 30.0, close_timeout_s: float = 10.0,
                 metrics: LedgerMetrics | None = None):
        self.ledger = ledger
        self.flush_interval_s, self.batch_size, self.max_pending = flush_interval_s, batch_size, max_pending
        self.retry_max_s, self.close_timeout_s = retry_max_s, close_timeout_s
        self.metrics = metrics
        self.written = 0
        self.errors = 0
        self.dropped = 0
        self._buf: collections.deque[LedgerRecord] = collections.deque()
        self._writing = 0
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        self._close_deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="router-ledger-writer", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        self._atexit = lambda: (m := ref()) is not None and m.close()
        atexit.register(self._atexit)

    @property
    def pending(self) -> int:
        """Records accepted but not yet committed (buffered + the batch being written)."""
        return len(self._buf) + self._writing

    def record(self, info: RouterInfo) -> None:
        rec = LedgerRecord.from_info(info)
        dropped = 0
        with self._cond:
            if self._closed:
                dropped = 1
            else:
                self._buf.append(rec)
                while len(self._buf) + self._writing > self.max_pending and self._buf:
                    self._buf.popleft()
                    dropped += 1
                if len(self._buf) >= self.batch_size or len(self._buf) == 1:
                    self._cond.notify_all()
            pending = self.pending
        if dropped:
            self._dropped(dropped)
        self._tell("ledger_pending", pending)

    def _tell(self, name: str, *args: Any) -> None:
        metrics = self.metrics
        if metrics is not None:
            try:
                if name == "ledger_pending":
                    metrics.ledger_pending(*args)
                elif name == "ledger_dropped":
                    metrics.ledger_dropped(*args)
                else:
                    metrics.ledger_error()
            except Exception:
                log.exception("ledger metrics failed")

    def _dropped(self, n: int) -> None:
        self.dropped += n
        log.error("ledger buffer full (%d records): dropped %d oldest record(s)", self.max_pending, n)
        self._tell("ledger_dropped", n)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                while not self._buf and not self._closing:
                    self._cond.wait()
                if not self._closing and backoff == 0.0:
                    deadline = time.monotonic() + self.flush_interval_s
                    while len(self._buf) < self.batch_size and not self._closing:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                if not self._buf:
                    if self._closing:
                        return
                    continue
                batch = [self._buf.popleft() for _ in range(min(self.batch_size, len(self._buf)))]
                self._writing = len(batch)
            try:
                self.ledger.write(batch)
            except Exception as e:
                self.errors += 1
                with self._cond:
                    self._writing = 0
                    self._buf.extendleft(reversed(batch))
                    over = max(0, len(self._buf) - self.max_pending)
                    for _ in range(over):
                        self._buf.popleft()
                    pending = self.pending
                backoff = min(self.retry_max_s, max(0.1, backoff * 2))
                log.warning("ledger write of %d records failed (%s); %d pending, retrying in %.1fs",
                            len(batch), e, pending, backoff)
                self._tell("ledger_error")
                if over:
                    self._dropped(over)
                self._tell("ledger_pending", pending)
                with self._cond:
                    if self._closing and time.monotonic() > self._close_deadline:
                        log.error("ledger still failing at shutdown: %d records lost", self.pending)
                        return
                    self._cond.wait(backoff)
                continue
            backoff = 0.0
            self.written += len(batch)
            with self._cond:
                self._writing = 0
                pending = self.pending
                self._cond.notify_all()
            self._tell("ledger_pending", pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every record accepted so far is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        """Flush (for at most `close_timeout_s` while the ledger fails), stop the writer, close the ledger."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._close_deadline = time.monotonic() + self.close_timeout_s
            self._cond.notify_all()
        self._thread.join(self.close_timeout_s + 1)
        with self._cond:
            self._closed = True
        atexit.unregister(self._atexit)
        try:
            self.ledger.close()
        except Exception:
            log.exception("closing the ledger failed")

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

