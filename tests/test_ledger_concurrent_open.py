"""The workers of `router serve --workers N` open a fresh SQLite ledger at the same moment: every one
must succeed. (Switching a new file to WAL does not wait on SQLite's busy timeout; before the retry,
one round in three to ten failed with "database is locked" and the server stopped on start.)"""

from __future__ import annotations

import multiprocessing
import os


def _open(path: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    from router.metering.ledger import SQLiteLedger

    barrier.wait()
    try:
        SQLiteLedger(path).close()
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {e}")


def test_workers_opening_a_new_ledger_together_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(25):
        path = os.path.join(tmp_path, f"ledger-{round_}.db")
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(path, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []
