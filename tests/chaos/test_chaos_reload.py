"""Reload storms with broken policies under `--workers`, while clients keep sending requests.

`router serve --workers 2 --watch` gets, every few tens of milliseconds, a new policy file (valid,
invalid YAML, an unknown model, bytes that are not UTF-8, empty, binary, deleted, tenant budgets
its in-process budgets cannot share) and SIGHUPs in between. Throughout: the supervisor and its
workers stay up (no worker dies or is replaced), every client request is answered 200, nothing is
logged as a traceback or a "Task exception was never retrieved", each rejection is reported, the
last valid policy is the one served at the end, and every answered request is in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter

import aiohttp
import pytest

from router.core.policy import hash_key
from router.dev.simulator import Simulator
from router.metering.ledger import open_ledger
from tests.chaos.support import figure, scale
from tests.serve_support import ServeProcesses, wait_until

STORM_S = scale(3.0, 20.0)
POLICY = """
version: 1
providers:
  a: {{kind: vllm, base_url: "{url}", region: eu}}
models:
  one:   {{provider: a, model: model-one, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  two:   {{provider: a, model: model-two, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  three: {{provider: a, model: model-three, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  general: {{targets: [{target}]}}
rules:
  - {{route: general}}
{extra}
"""
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def serve(tmp_path):
    with ServeProcesses(tmp_path) as procs:
        yield procs.start


def write_atomically(path, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


async def test_reload_storm_with_broken_policies_under_workers(serve, tmp_path):
    async with Simulator(models=["model-one", "model-two", "model-three"]) as sim:
        def text(target: str, extra: str = "") -> bytes:
            return POLICY.format(url=sim.base_url, target=target, extra=extra).encode()

        variants = {
            "valid-one": text("one"), "valid-two": text("two"), "broken-yaml": text("one")[:-30] + b"\nroutes: [",
            "unknown-model": text("nine"), "not-utf8": text("one") + b"# caf\xe9\xff\n", "empty": b"",
            "binary": bytes(range(256)), "deleted": b"",
            "memory-budgets": text("two", f'tenants:\n  t: {{keys: ["{hash_key("sk-x")}"], budget: {{daily_usd: 1}}}}'),
        }
        path = tmp_path / "policy.yaml"
        path.write_bytes(variants["valid-one"])
        ledger = tmp_path / "ledger.db"
        s = await serve(path, "--workers", "2", "--watch", "--watch-interval-s", "0.05", "--grace-s", "3",
                        "--ledger", str(ledger), env={"ROUTER_BUDGETS": "memory"})
        statuses: Counter[int | str] = Counter()
        served: list[str] = []
        storm_over = asyncio.Event()

        async def client() -> None:
            async with aiohttp.ClientSession() as http:
                while not storm_over.is_set():
                    try:
                        async with http.post(s.url + "/v1/chat/completions", json=BODY,
                                             headers={"X-Router-Task": "general"}) as r:
                            await r.read()
                            statuses[r.status] += 1
                            if r.status == 200:
                                served.append(r.headers["x-request-id"])
                    except aiohttp.ClientError as e:
                        statuses[type(e).__name__] += 1
                        await asyncio.sleep(0.01)

        clients = [asyncio.create_task(client()) for _ in range(6)]
        writes, hups, i = Counter(), 0, 0
        names = list(variants)
        t0 = time.monotonic()
        while time.monotonic() - t0 < STORM_S:
            name = names[i % len(names)]
            i += 1
            if name == "deleted":
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                write_atomically(path, variants[name])
            writes[name] += 1
            if i % 2 == 0:
                s.proc.send_signal(signal.SIGHUP)
                hups += 1
            await asyncio.sleep(0.03)
            assert s.alive(), s.stderr()[-3000:]
        write_atomically(path, text("three"))   # the storm ends on a valid policy
        s.proc.send_signal(signal.SIGHUP)

        async def three() -> bool:
            async with aiohttp.ClientSession() as http:
                models = []
                for _ in range(6):  # new connections: both workers answer
                    async with http.post(s.url + "/v1/chat/completions", json=BODY,
                                         headers={"X-Router-Task": "general", "Connection": "close"}) as r:
                        await r.read()
                        models.append(r.headers.get("x-router-model"))
                        if r.status == 200:
                            served.append(r.headers["x-request-id"])
                        statuses[r.status] += 1
            return set(models) == {"three"}

        await wait_until(three, timeout=10, what="the last valid policy served by every worker")
        storm_over.set()
        await asyncio.gather(*clients)
        assert await s.stop() == 0
        err = s.stderr()

    rows = Counter()
    db = open_ledger(str(ledger))
    for r in db.records():
        rows[r.status] += 1
    ids = {r.id for r in db.records()}
    db.close()
    rejected, reloaded = err.count("the policy was rejected"), err.count(": reloaded ")
    figure("reload storm --workers 2", seconds=STORM_S, file_writes=sum(writes.values()), sighups=hups,
           reloads_accepted=reloaded, rejections_reported=rejected, requests=sum(statuses.values()),
           non_200=sum(n for k, n in statuses.items() if k != 200), ledger_rows=len(ids), ledger_ok=rows["ok"])
    assert statuses and set(statuses) == {200}, statuses
    assert rejected > 0 and reloaded > 0
    assert "Traceback" not in err and "Task exception was never retrieved" not in err, err[-3000:]
    assert "exited with" not in err and "failed on start" not in err, err[-3000:]
    assert "not UTF-8 text" in err and "--budgets redis://" in err
    assert set(served) <= ids and rows["ok"] == len(served)
