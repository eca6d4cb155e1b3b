"""The ledger: one row per request (ok, error or cancelled), written in batches off the hot path.

- `Ledger`: the small storage interface (`write(records)`, `summary(...)`, `records(...)`, `close()`),
  with `SQLiteLedger` (embedded, WAL) and `PostgresLedger` (psycopg 3, for many replicas).
- `LedgerMeter`: a `Meter` whose `record()` only appends to a bounded in-memory buffer; a
  writer thread flushes every `flush_interval_s` or `batch_size` records, retries with backoff
  while the ledger is down, and `aclose()` / `close()` flush what is left. With a `spool`
  directory (durable mode) `record()` also appends the record to a local write-ahead file before
  it returns; a process killed with SIGKILL loses nothing recorded, and the next start replays it.

The primary key is router's own request id (random, unguessable; never a client's), so writes
are idempotent: a batch replayed after a lost acknowledgement, or a spool replayed after a crash,
is never counted twice. The client's id is kept in `client_request_id`, for correlation only.

>>> meter = LedgerMeter(open_ledger("ledger.db"))            # doctest: +SKIP
>>> Router(policy, meters=[meter])                            # doctest: +SKIP
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import collections
import contextlib
import fcntl
import functools
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
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from router.core.meter import Meter
from router.core.response import RouterInfo

if TYPE_CHECKING:
    from router.core.meter import LiveView

__all__ = ["GROUPINGS", "Ledger", "LedgerMeter", "LedgerRecord", "PostgresLedger", "SQLiteLedger",
           "SummaryRow", "open_ledger"]

log = logging.getLogger("router.metering.ledger")

TABLE = "router_requests"
GROUPINGS = ("tenant", "route", "provider", "model", "task", "api")


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
    api: str = "chat"               # the API the request came in on: chat | messages | responses
    client_request_id: str | None = None   # the caller's X-Request-Id: correlation only, never the key
    cached_tokens: int = 0          # prompt tokens read from the provider's prompt cache
    cache_write_tokens: int = 0     # prompt tokens written to it
    price_source: str | None = None   # policy, or catalogue:<key> (litellm <version>), [window]
    response_cache: str | None = None  # router's response cache: hit | miss; null: not cacheable
    cache_saved_usd: float = 0.0    # a hit: what the upstream call it replaced cost
    pick: str | None = None         # how the replica was picked: affinity | spill | least_loaded | round_robin | only
    hedge: str | None = None        # a hedge: won | lost | failed | capped (docs/routing.md)
    hedge_cost_usd: float = 0.0     # the losing hedge attempt's cost (included in cost_usd)
    resumed: int = 0                # times the stream was continued on another deployment after a cut

    @classmethod
    def from_info(cls, info: RouterInfo) -> LedgerRecord:
        attempts = orjson.dumps(info.attempts).decode()  # orjson writes dataclasses as asdict() would
        return cls(info.request_id, info.created, info.tenant, info.task, info.task_source, info.route,
                   info.provider, info.model, info.upstream_model, info.region, info.prompt_tokens,
                   info.completion_tokens, info.reasoning_tokens, info.usage_estimated, info.cost_usd,
                   info.reference_cost_usd, info.latency_s, info.ttft_s, info.status,
                   info.error[:1000] if info.error else None, attempts, info.api, info.client_request_id,
                   info.cached_tokens, info.cache_write_tokens, info.price_source, info.response_cache,
                   info.cache_saved_usd, info.pick, info.hedge, info.hedge_cost_usd, info.resumed)


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
    cached_tokens: int = 0          # prompt tokens read from providers' prompt caches
    cache_hits: int = 0             # requests answered by router's response cache
    cache_saved_usd: float = 0.0    # what those hits' upstream calls cost

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

    def interrupt(self) -> None:  # noqa: B027 - optional hook
        """Abort a write in progress from another thread (a stuck writer at shutdown). Never blocks long."""

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
               "SUM(CASE WHEN reference_cost_usd IS NULL THEN 0 ELSE reference_cost_usd - cost_usd END), "
               "SUM(cached_tokens), SUM(CASE WHEN response_cache = 'hit' THEN 1 ELSE 0 END), SUM(cache_saved_usd) "
               f"FROM {TABLE}{where} GROUP BY 1, 2 ORDER BY 2, 1")
        out = []
        for row in self._query(sql, params):
            out.append(SummaryRow(row[0], float(row[1]) if row[1] is not None else None, int(row[2]),
                                  int(row[3] or 0), int(row[4] or 0), int(row[5] or 0), int(row[6] or 0),
                                  float(row[7] or 0), float(row[8] or 0), float(row[9] or 0), int(row[10] or 0),
                                  int(row[11] or 0), float(row[12] or 0)))
        return out

    def records(self, *, since: float | None = None, until: float | None = None) -> list[LedgerRecord]:
        where, params = self._where(since, until)
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} ORDER BY ts, id", params)
        return [LedgerRecord(*(bool(v) if c == "usage_estimated" else v for c, v in zip(COLUMNS, r, strict=True)))
                for r in rows]

    def get(self, request_id: str) -> LedgerRecord | None:
        """The row of router's request id (`RouterInfo.request_id`, the response's ``x-request-id``)."""
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE id = {self.placeholder}",
                           [request_id])
        if not rows:
            return None
        return LedgerRecord(*(bool(v) if c == "usage_estimated" else v
                              for c, v in zip(COLUMNS, rows[0], strict=True)))

    def find(self, client_request_id: str) -> list[LedgerRecord]:
        """Every row whose caller sent this id (a caller's ids need not be unique: each request has its row)."""
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE client_request_id = "
                           f"{self.placeholder} ORDER BY ts, id", [client_request_id])
        return [LedgerRecord(*(bool(v) if c == "usage_estimated" else v for c, v in zip(COLUMNS, r, strict=True)))
                for r in rows]


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
    attempts {json_type} NOT NULL,
    api TEXT NOT NULL DEFAULT 'chat',
    client_request_id TEXT,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    price_source TEXT,
    response_cache TEXT,
    cache_saved_usd {float_type} NOT NULL DEFAULT 0,
    pick TEXT,
    hedge TEXT,
    hedge_cost_usd {float_type} NOT NULL DEFAULT 0,
    resumed INTEGER NOT NULL DEFAULT 0
)"""

# Columns added after the first release, for tables created before them: (name, SQL type and default).
# Old rows read them as their default (client_request_id: NULL; before it the id column held it).
_ADDED_COLUMNS = (("api", "TEXT NOT NULL DEFAULT 'chat'"), ("client_request_id", "TEXT"),
                  # prices that match the bill, the response cache (docs/metering.md)
                  ("cached_tokens", "INTEGER NOT NULL DEFAULT 0"), ("cache_write_tokens", "INTEGER NOT NULL DEFAULT 0"),
                  ("price_source", "TEXT"), ("response_cache", "TEXT"),
                  ("cache_saved_usd", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
                  # fleets: replica picking, hedging, recovery after the first byte (docs/routing.md)
                  ("pick", "TEXT"), ("hedge", "TEXT"), ("hedge_cost_usd", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
                  ("resumed", "INTEGER NOT NULL DEFAULT 0"))


_INDEXES = (f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_tenant_ts ON {TABLE} (tenant, ts)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_client_id ON {TABLE} (client_request_id)")


_CHUNK = 256   # rows per INSERT at most (fewer where SQLite allows fewer parameters per statement)


@functools.cache
def _insert_sql(rows: int) -> str:
    one = f"({', '.join('?' * len(COLUMNS))})"
    return f"INSERT OR IGNORE INTO {TABLE} ({', '.join(COLUMNS)}) VALUES {', '.join([one] * rows)}"


class SQLiteLedger(Ledger):
    """An embedded ledger in one SQLite file: WAL journal, `synchronous=FULL` (a committed batch survives
    a power cut), one connection shared under a lock."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        with self._lock:
            # Switching a new file to WAL takes an exclusive lock without waiting on the busy timeout:
            # workers opening it together would fail at random ("database is locked"). Retry instead.
            deadline = time.monotonic() + 30
            while True:
                try:
                    self._conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("BEGIN IMMEDIATE")  # one migrating process at a time (workers start together)
            try:
                self._conn.execute(_schema("TEXT", "REAL", "INTEGER", "TEXT"))
                have = {row[1] for row in self._conn.execute(f"PRAGMA table_info({TABLE})")}
                for name, decl in _ADDED_COLUMNS:
                    if name not in have:
                        self._conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {decl}")
                for stmt in _INDEXES:
                    self._conn.execute(stmt)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def write(self, records: Sequence[LedgerRecord]) -> None:
        """One transaction; the rows in multi-row INSERTs of up to `_CHUNK` rows, then powers of two
        (a handful of statements, each prepared once). Not `executemany`: sqlite3 releases the GIL
        around every row's step, and on a busy event loop each of those hand-offs cost more than the
        row's own work (benchmarks/README.md#the-ledger-writer-and-the-gil)."""
        rows = list(map(_row, records))
        with self._lock:
            per_statement = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(COLUMNS)
            chunk = 1 << (min(_CHUNK, per_statement).bit_length() - 1)   # a power of two
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                i, n = 0, len(rows)
                while i < n:
                    k = chunk if n - i >= chunk else 1 << ((n - i).bit_length() - 1)
                    self._conn.execute(_insert_sql(k), list(chain.from_iterable(rows[i:i + k])))
                    i += k
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

    def __init__(self, url: str, *, schema: str | None = None, connect_timeout_s: int = 5,
                 statement_timeout_s: float = 15.0, lock_timeout_s: float = 5.0):
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
        # a statement (or a wait for a lock) that takes longer fails and is retried: a writer is never stuck
        self.statement_timeout_s, self.lock_timeout_s = statement_timeout_s, lock_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None   # connected on first use: a ledger that is down does not stop a start

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            # keepalives and tcp_user_timeout: a peer that vanished is noticed, not waited on forever
            conn = self._psycopg.connect(self.url, connect_timeout=self.connect_timeout_s, keepalives=1,
                                         keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                                         tcp_user_timeout=int(1000 * (self.statement_timeout_s + 5)))
            try:
                with conn.transaction():
                    conn.execute(f"SET statement_timeout = {int(self.statement_timeout_s * 1000)}")
                    conn.execute(f"SET lock_timeout = {int(self.lock_timeout_s * 1000)}")
                    if self.schema:
                        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                        conn.execute(f'SET search_path TO "{self.schema}"')
                    conn.execute(_schema("TEXT", "DOUBLE PRECISION", "BOOLEAN", "JSONB"))
                    for name, decl in _ADDED_COLUMNS:
                        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} {decl}")
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

    def interrupt(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=2.0)

    def close(self) -> None:
        if not self._lock.acquire(timeout=5.0):  # a writer still stuck: leave its connection to the OS
            log.error("ledger: a write is still in progress at close; not waiting for it")
            return
        try:
            self._drop()
        finally:
            self._lock.release()


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


_SPOOL_SUFFIX = ".spool"


class _Spool:
    """The durable mode's write-ahead files, one JSON line per record.

    `append` writes a record with one ``write(2)`` before `LedgerMeter.record()` returns, so it
    survives the process being killed (and, with `fsync`, the machine losing power); a segment is
    deleted once every record in it is committed. Each process writes its own segments and holds an
    exclusive ``flock`` on each while it lives; a segment nobody holds (its process was killed) is
    claimed and replayed by the next process that opens the spool. Not thread-safe: the meter
    calls it under its lock.
    """

    def __init__(self, directory: str, *, fsync: bool = False, segment_records: int = 10_000):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.fsync, self.segment_records = fsync, segment_records
        self._tag = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._seq = 0
        self.fds: dict[str, int] = {}       # segment -> fd, open (and locked) while the segment lives
        self.pending: dict[str, int] = {}   # segment -> records in it not yet committed
        self.keep: set[str] = set()         # segments with records dropped from memory: left for the next start
        self.current = ""
        self._count = 0
        self._rotate()

    @contextlib.contextmanager
    def _dir_lock(self) -> Any:
        """Serialises creating and claiming segments between processes sharing the directory."""
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        with self._dir_lock():
            self._seq += 1
            path = os.path.join(self.dir, f"{self._tag}-{self._seq:08d}{_SPOOL_SUFFIX}")
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        old, self.current, self._count = self.current, path, 0
        self.fds[path], self.pending[path] = fd, 0
        if old:
            self._maybe_delete(old)

    def append(self, line: bytes) -> str:
        if self._count >= self.segment_records:
            self._rotate()
        fd = self.fds[self.current]
        os.write(fd, line)
        if self.fsync:
            os.fsync(fd)
        self.pending[self.current] += 1
        self._count += 1
        return self.current

    def committed(self, segment: str, n: int) -> None:
        self.pending[segment] = self.pending.get(segment, 0) - n
        if segment != self.current:
            self._maybe_delete(segment)

    def _maybe_delete(self, segment: str) -> None:
        if self.pending.get(segment, 0) > 0 or segment in self.keep:
            return
        with contextlib.suppress(OSError):
            os.unlink(segment)   # unlinked while still locked: nobody can claim it in between
        fd = self.fds.pop(segment, None)
        if fd is not None:
            os.close(fd)
        self.pending.pop(segment, None)

    def claim_orphans(self) -> list[tuple[str, list[LedgerRecord]]]:
        """Segments no live process holds, with their records (a torn last line is skipped)."""
        out = []
        with self._dir_lock():
            for name in sorted(os.listdir(self.dir)):
                path = os.path.join(self.dir, name)
                if not name.endswith(_SPOOL_SUFFIX) or path in self.fds:
                    continue
                try:
                    fd = os.open(path, os.O_RDWR | os.O_APPEND)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live process's segment
                    os.close(fd)
                    continue
                records = []
                with open(path, "rb") as f:
                    for line in f:
                        try:
                            records.append(LedgerRecord(*orjson.loads(line)))
                        except (orjson.JSONDecodeError, TypeError):
                            log.warning("ledger spool %s: skipped a torn or unreadable line", path)
                self.fds[path], self.pending[path] = fd, len(records)
                out.append((path, records))
                self._maybe_delete(path)
        return out

    def close(self) -> None:
        """Delete what is committed; release (keep) segments still holding records for the next start."""
        for segment in list(self.fds):
            if self.pending.get(segment, 0) <= 0 and segment not in self.keep:
                self._maybe_delete(segment)
            else:
                os.close(self.fds.pop(segment))


class LedgerMeter(Meter):
    """Batches finished requests into a `Ledger` from a writer thread.

    `record()` converts the request to a `LedgerRecord` and appends it to a buffer: no I/O on the
    event loop. The writer flushes when `batch_size` records are waiting or `flush_interval_s`
    after the oldest unflushed one arrived. While the ledger fails, records stay in the buffer
    and the batch is retried with exponential backoff (up to `retry_max_s`; new records never
    cut a backoff short); when more than `max_pending` are waiting the **oldest** are dropped and
    counted. `metrics` (e.g. a `PrometheusMeter`) is told `ledger_pending(n)`, `ledger_error()` and
    `ledger_dropped(n)`. At `close()` every record not committed within `close_timeout_s` is
    logged and counted as lost.

    Durable mode: with `spool` (a directory; else ``$ROUTER_LEDGER_SPOOL``, else the policy's
    ``metering.spool`` when the meter is bound), `record()` also appends the record to a local
    write-ahead file before returning (one ``write(2)``, plus ``fsync`` with `spool_fsync`). Records
    a killed process never committed are replayed into the ledger by the next `LedgerMeter` that
    opens the same spool; records still uncommitted at a clean shutdown stay there for it too.
    """

    def __init__(self, ledger: Ledger, *, flush_interval_s: float = 0.2, batch_size: int = 500,
                 max_pending: int = 100_000, retry_max_s: float = 30.0, close_timeout_s: float = 10.0,
                 metrics: LedgerMetrics | None = None, spool: str | os.PathLike[str] | None = None,
                 spool_fsync: bool = False):
        self.ledger = ledger
        self.flush_interval_s, self.batch_size, self.max_pending = flush_interval_s, batch_size, max_pending
        self.retry_max_s, self.close_timeout_s = retry_max_s, close_timeout_s
        self.metrics = metrics
        self.written = 0
        self.errors = 0
        self.dropped = 0      # records lost: dropped from a full buffer, or not committed at shutdown
        self.replayed = 0     # records read back from a spool a previous process left
        self._buf: collections.deque[LedgerRecord] = collections.deque()
        self._segs: collections.deque[str | None] | None = None  # durable mode: each buffered record's segment
        self._spool: _Spool | None = None
        self._spool_fsync = spool_fsync
        self._spool_failed = False
        self._writing = 0
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        self._close_deadline = 0.0
        target = spool or os.environ.get("ROUTER_LEDGER_SPOOL")
        if target:
            self._open_spool(os.fspath(target))
        self._thread = threading.Thread(target=self._run, name="router-ledger-writer", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        self._atexit = lambda: (m := ref()) is not None and m.close()
        atexit.register(self._atexit)

    @property
    def pending(self) -> int:
        """Records accepted but not yet committed (buffered + the batch being written)."""
        return len(self._buf) + self._writing

    @property
    def durable(self) -> bool:
        return self._spool is not None

    def bind(self, view: LiveView) -> None:
        """Durable mode from the policy's ``metering.spool``, unless a spool is set already."""
        target = view.policy.metering.spool
        if target and self._spool is None:
            with self._cond:
                self._open_spool(target)
                self._cond.notify_all()

    def _open_spool(self, directory: str) -> None:
        spool = _Spool(directory, fsync=self._spool_fsync)
        segs: collections.deque[str | None] = collections.deque(None for _ in self._buf)
        for path, records in spool.claim_orphans():
            self._buf.extend(records)
            segs.extend(path for _ in records)
            self.replayed += len(records)
        self._spool, self._segs = spool, segs
        if self.replayed:
            log.warning("ledger spool %s: replaying %d record(s) a previous process did not commit",
                        directory, self.replayed)

    def record(self, info: RouterInfo) -> None:
        rec = LedgerRecord.from_info(info)
        lost = 0
        with self._cond:
            if self._closed:
                lost = 1
            else:
                if self._spool is not None:
                    self._segs.append(self._spool_append(rec))  # type: ignore[union-attr]
                self._buf.append(rec)
                while len(self._buf) + self._writing > self.max_pending and self._buf:
                    lost += self._drop_oldest()
                if len(self._buf) >= self.batch_size or len(self._buf) == 1:
                    self._cond.notify_all()
            pending = self.pending
        if lost:
            self._dropped(lost, f"ledger buffer full ({self.max_pending} records)" if not self._closed
                          else "ledger already closed")
        self._tell("ledger_pending", pending)

    def _spool_append(self, rec: LedgerRecord) -> str | None:
        try:
            segment = self._spool.append(orjson.dumps(_row(rec)) + b"\n")  # type: ignore[union-attr]
        except OSError as e:
            if not self._spool_failed:  # once per failure streak: a full disk must not flood the log
                log.error("ledger spool write failed (%s): records stay in memory only until it works again", e)
            self._spool_failed = True
            return None
        self._spool_failed = False
        return segment

    def _drop_oldest(self) -> int:
        """Drop the oldest buffered record; 1 if it is lost, 0 if the spool keeps it for the next start."""
        self._buf.popleft()
        if self._segs is not None:
            segment = self._segs.popleft()
            if segment is not None:
                self._spool.keep.add(segment)  # type: ignore[union-attr]
                return 0
        return 1

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

    def _dropped(self, n: int, why: str) -> None:
        self.dropped += n
        log.error("%s: %d record(s) lost", why, n)
        self._tell("ledger_dropped", n)

    def _run(self) -> None:
        backoff = 0.0
        retry_at = 0.0
        while True:
            with self._cond:
                # Wait for work; while backing off, until retry_at whatever arrives (no retry storm).
                while True:
                    now = time.monotonic()
                    if self._closing:
                        if not self._buf or (backoff and now >= self._close_deadline):
                            return  # done, or still failing at the deadline: close() accounts for the rest
                        wait_until = min(retry_at, self._close_deadline)
                    elif not self._buf:
                        self._cond.wait()
                        continue
                    else:
                        wait_until = retry_at
                    if now >= wait_until:
                        break
                    self._cond.wait(wait_until - now)
                if not self._closing and backoff == 0.0:
                    deadline = time.monotonic() + self.flush_interval_s
                    while len(self._buf) < self.batch_size and not self._closing:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                n = min(self.batch_size, len(self._buf))
                batch = [self._buf.popleft() for _ in range(n)]
                segs = [self._segs.popleft() for _ in range(n)] if self._segs is not None else None
                self._writing = n
            try:
                self.ledger.write(batch)
            except Exception as e:
                self.errors += 1
                lost = 0
                with self._cond:
                    self._writing = 0
                    self._buf.extendleft(reversed(batch))
                    if segs is not None and self._segs is not None:
                        self._segs.extendleft(reversed(segs))
                    while len(self._buf) > self.max_pending:
                        lost += self._drop_oldest()
                    pending = self.pending
                backoff = min(self.retry_max_s, max(0.1, backoff * 2))
                retry_at = time.monotonic() + backoff
                log.warning("ledger write of %d records failed (%s); %d pending, retrying in %.1fs",
                            len(batch), e, pending, backoff)
                self._tell("ledger_error")
                if lost:
                    self._dropped(lost, f"ledger buffer full ({self.max_pending} records)")
                self._tell("ledger_pending", pending)
                continue
            backoff = retry_at = 0.0
            self.written += len(batch)
            with self._cond:
                self._writing = 0
                if segs is not None and self._spool is not None:
                    for segment, count in collections.Counter(s for s in segs if s is not None).items():
                        self._spool.committed(segment, count)
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
        """Flush (for at most `close_timeout_s` while the ledger fails), stop the writer, close the ledger.

        Never hangs on a stuck write: after `close_timeout_s` the write in progress is interrupted.
        Every record not committed by then is logged and counted as lost (durable mode: kept in the
        spool for the next start)."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._close_deadline = time.monotonic() + self.close_timeout_s
            self._cond.notify_all()
        self._thread.join(self.close_timeout_s + 0.5)
        if self._thread.is_alive():  # stuck inside a write: abort it
            self.ledger.interrupt()
            self._thread.join(2.0)
        with self._cond:
            self._closed = True
            left = self.pending
            kept = sum(1 for s in self._segs if s is not None) if self._segs is not None else 0
            if self._writing and self._spool is not None:
                kept += self._writing  # the batch in flight is in the spool too
            if self._spool is not None:
                with contextlib.suppress(OSError):
                    self._spool.close()
        atexit.unregister(self._atexit)
        lost = max(0, left - kept)
        if kept:
            log.error("ledger: %d record(s) not committed at shutdown are kept in the spool %s; the next start "
                      "replays them", kept, self._spool.dir if self._spool is not None else "")
        if lost:
            self._dropped(lost, f"ledger still failing at shutdown (gave up after {self.close_timeout_s:g} s)")
        try:
            self.ledger.close()
        except Exception:
            log.exception("closing the ledger failed")

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
