"""Benchmark `router serve` against a near-zero-cost upstream, with wrk as the load generator.

    apt-get install -y wrk                       # Debian/Ubuntu; the benchmark stops if wrk is missing
    python benchmarks/bench_proxy.py             # ~1 minute on 2 cores
    python benchmarks/bench_proxy.py --litellm --litellm-bin /tmp/lvenv/bin/litellm --portkey
                                                 # side by side (see benchmarks/README.md)

What runs, all on 127.0.0.1 in this one run:

- the static upstream, ``benchmarks/static_upstream.py`` (raw asyncio, uvloop when installed),
  answering every POST with a fixed chat.completion (or, for ``"stream": true``, a fixed SSE
  stream);
- ``router serve`` with one worker and its default meters, pointed at that upstream: routing
  ``model: auto`` through the classifier, the Prometheus meter and the SQLite ledger (in a temp
  directory) on;
- wrk with a Lua script POSTing a chat body, for 1, 16 and 64 connections, straight to the
  upstream (the baseline) and through each proxy.

It prints requests/s, the latency the proxy adds (proxy minus direct, p50 and p99), the
streaming time-to-first-token the proxy adds, the proxy's RSS and its time to ready.
``--money`` adds the money features, each in its own ``router serve`` beside the others, all sent
the same requests with a tenant's key and ``temperature: 0``, each request's text numbered (wrk's
Lua) so that no two are alike unless a variant says so: ``off`` (a tenant, no rate limits, no
cache), ``no-hook`` (``off`` with the engine's admission hook removed, ``Admission.open`` returning
None through a ``sitecustomize``: what the features cost when off), ``rl`` (the tenant's requests,
tokens and in-flight limits, set too high to refuse, in memory), ``rl-redis`` (the same in Redis,
``--redis``), ``miss`` (a route ``cache``, in memory: every request a miss, looked up and stored),
``hit`` (the same with 8 distinct texts: after the first 8, every request a hit) and ``hit-redis``
(the cache in Redis). Ratios are against ``off`` in the same run.
Optional: ``--litellm`` (the LiteLLM proxy; ``--litellm-bin`` names its executable, e.g. from a
venv, see benchmarks/README.md) and ``--portkey`` (needs node and npm; ``npm install
@portkey-ai/gateway`` runs in a temp dir unless ``--portkey-dir`` has it) for the same runs
against those proxies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHAT_BODY = (b'{"model":"auto","messages":[{"role":"user","content":'
             b'"Write a Python function that merges two sorted lists."}],"max_tokens":32}')

# ------------------------------------------------------------------------------------ helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.005)
    raise SystemExit(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def process(cmd: list[str], **kw) -> Iterator[subprocess.Popen]:
    kw.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True, **kw)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


PROXIES: dict[str, subprocess.Popen] = {}  # name -> process: paused while another target is measured


def only(name: str | None) -> None:
    """SIGSTOP every proxy but `name` (None: resume all), so idle background work in one proxy
    (LiteLLM's schedulers, for one) does not take CPU from the one being measured."""
    for other, proc in PROXIES.items():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT if name is None or other == name else signal.SIGSTOP)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, connections: int, seconds: float, lua: str, headers: dict[str, str]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", lua]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30)
    out = proc.stdout
    if "Requests/sec" not in out:
        raise SystemExit(f"wrk failed on {url}:\n{out}{proc.stderr}")
    res: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        res[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["errors"] = float(errors.group(1)) if errors else 0.0
    return res


async def _ttft(url: str, n: int, headers: dict[str, str]) -> float:
    """Median time from sending a streamed request to its first `data:` line, one at a time."""
    body = CHAT_BODY[:-1] + b',"stream":true}'
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    reader, writer = await asyncio.open_connection(host, int(port))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(req)
        while True:
            line = await reader.readline()
            if line.startswith(b"data:"):
                times.append(time.perf_counter() - t0)
                break
        # drain the rest of this response (fixed or chunked); it ends at [DONE]
        while b"[DONE]" not in line:
            line = await reader.readline()
        while True:  # chunked encoding: skip to the terminating 0-length chunk
            if line.strip() in (b"0", b""):
                if line.strip() == b"0":
                    await reader.readline()
                break
            line = await reader.readline()
    writer.close()
    return statistics.median(times) * 1e3


def ttft(url: str, n: int = 300, headers: dict[str, str] | None = None) -> float:
    return asyncio.run(_ttft(url, n, headers or {}))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------ the run

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=4, help="duration of each wrk run")
    p.add_argument("--connections", default="1,16,64")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every target this many times, in rotated order; print the medians")
    p.add_argument("--litellm", action="store_true", help="also run the LiteLLM proxy (litellm[proxy])")
    p.add_argument("--litellm-bin", default="litellm",
                   help="the LiteLLM proxy executable (default: `litellm` on PATH), e.g. /tmp/lvenv/bin/litellm")
    p.add_argument("--portkey", action="store_true", help="also run the Portkey gateway (node, npm)")
    p.add_argument("--portkey-dir", help="an existing `npm install @portkey-ai/gateway` prefix to reuse")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "ENV"),
                   help="also run router serve as NAME with extra environment ENV (KEY=VALUE[,KEY=VALUE...]); "
                        "e.g. `--variant base PYTHONPATH=/tmp/base/src` for an A/B against another commit "
                        "in the same run, or a feature switched on by its variable")
    p.add_argument("--money", action="store_true",
                   help="also measure rate limits and the response cache off and on (see the module docstring)")
    p.add_argument("--redis", default=os.environ.get("ROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   help="Redis for the --money variants rl-redis and hit-redis (keys under a prefix of this run, "
                        "deleted at the end)")
    p.add_argument("--money-variant", nargs=2, metavar=("NAME", "ENV"),
                   help="with --money, also run off, rl, rl-redis and hit-redis as `<target>@NAME` with extra "
                        "environment ENV (KEY=VALUE[,...]), their ratios against `off@NAME`: e.g. `--money-variant "
                        "base PYTHONPATH=/tmp/base/src`, an A/B of the money features against another commit")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu) or build it from "
              "https://github.com/wg/wrk", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    lua = tmp / "post.lua"
    lua.write_text(textwrap.dedent(f"""\
        wrk.method = "POST"
        wrk.body = '{CHAT_BODY.decode()}'
        wrk.headers["Content-Type"] = "application/json"
        """))
    up_port, px_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    policy = tmp / "policy.yaml"
    policy.write_text(textwrap.dedent(f"""\
        version: 1
        providers:
          local: {{kind: vllm, base_url: "{upstream}", region: eu}}
        models:
          bench: {{provider: local, model: bench-model, price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}}}
        routes:
          coding:  {{targets: [bench]}}
          general: {{targets: [bench]}}
        rules:
          - {{if: {{task: coding}}, route: coding}}
          - {{route: general}}
        """))
    conns = [int(c) for c in args.connections.split(",")]
    targets: list[tuple[str, str, dict[str, str]]] = []
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(process([sys.executable, str(HERE / "static_upstream.py"), str(up_port)]))
        wait_ready(upstream + "/models", up)
        targets.append(("direct", upstream + "/chat/completions", {}))

        # the default `router serve` setup: one process, Prometheus meter, SQLite ledger
        env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "ROUTER_LEDGER")}
        log = tmp / "router.log"
        with open(log, "wb") as err:
            px = stack.enter_context(process([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy),
                                              "--port", str(px_port), "--ledger", str(tmp / "ledger.db")],
                                             env=env, stderr=err))
        ready_s = wait_ready(f"http://127.0.0.1:{px_port}/readyz", px)
        PROXIES["router"] = px
        loop_name = m.group(1) if (m := re.search(r"event loop: (\w+)", log.read_text())) else "unknown"
        targets.append(("router", f"http://127.0.0.1:{px_port}/v1/chat/completions", {}))
        for name, extra in args.variant:  # the same setup with other code or switches, measured alongside
            v_env = {**env, **dict(kv.split("=", 1) for kv in extra.split(",") if kv)}
            v_port = free_port()
            with open(tmp / f"{name}.log", "wb") as err:
                vp = stack.enter_context(process([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy),
                                                  "--port", str(v_port), "--ledger", str(tmp / f"{name}.db")],
                                                 env=v_env, stderr=err))
            wait_ready(f"http://127.0.0.1:{v_port}/readyz", vp)
            PROXIES[name] = vp
            targets.append((name, f"http://127.0.0.1:{v_port}/v1/chat/completions", {}))

        money: list[str] = []
        if args.money:
            money = start_money(stack, tmp, upstream, env, args.redis, targets)
            if args.money_variant:
                vname, extra = args.money_variant
                money += start_money(stack, tmp, upstream, {**env, **dict(kv.split("=", 1) for kv in extra.split(",")
                                                                           if kv)},
                                     args.redis, targets, suffix="@" + vname,
                                     names=("off", "rl", "rl-redis", "hit-redis"))
        if args.litellm:
            targets.append(start_litellm(stack, tmp, upstream, args.litellm_bin))
        if args.portkey:
            targets.append(start_portkey(stack, Path(args.portkey_dir) if args.portkey_dir else tmp, upstream))

        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for c in conns:
                # each round in a rotated order, so that drift in the machine's speed hits all targets alike
                for name, url, headers in targets[r % len(targets):] + targets[:r % len(targets)]:
                    only(name)
                    script = str(MONEY_LUA.get(name, lua))
                    if name != "direct":
                        wrk(url, c, 1, script, headers)  # warm up: connections, caches, JIT (node)
                    runs.setdefault((name, c), []).append(wrk(url, c, args.seconds, script, headers))
                    time.sleep(0.3)  # let it finish what wrk left in flight before it is paused
        # the median of the rounds, each figure on its own
        results = {key: {k: statistics.median(x[k] for x in xs) for k in xs[0]} for key, xs in runs.items()}
        only("router")
        rss = rss_mb(px.pid)
        ttft_direct = ttft(upstream + "/chat/completions")
        ttft_router = ttft(f"http://127.0.0.1:{px_port}/v1/chat/completions")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{px_port}/metrics").read().decode()
        only(None)
        money_metrics = {name: urllib.request.urlopen(url.replace("/v1/chat/completions", "/metrics"),
                                                      timeout=10).read().decode()
                         for name, url, _ in targets if name in money}
        if money:
            clear_redis(args.redis)

    print(f"\nrouter serve, 1 worker, {loop_name} event loop, {os.cpu_count()} cores, wrk -t1 {args.seconds:g}s "
          f"per run{f', median of {args.rounds} rounds' if args.rounds > 1 else ''}, model=auto (classifier on), "
          f"Prometheus meter and SQLite ledger on\n")
    print(f"{'conns':>5} {'target':>8} {'req/s':>9} {'vs direct':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'added p50':>9} {'added p99':>9} {'non-2xx':>7}")
    for c in conns:
        d = results["direct", c]
        for name, _, _ in targets:
            r = results[name, c]
            added = "" if name == "direct" else f"{r['p50'] - d['p50']:9.3f} {r['p99'] - d['p99']:9.3f}"
            print(f"{c:>5} {name:>8} {r['rps']:>9.0f} {r['rps'] / d['rps']:>9.3f} {r['p50']:>8.3f} "
                  f"{r['p99']:>8.3f} {added:>19} {int(r['errors']):>7}")
        for name, _, _ in targets:
            if name not in ("direct", "router") and (name, c) in results:
                print(f"{'':>5} router/{name}: {results['router', c]['rps'] / results[name, c]['rps']:.1f}x req/s")
    print(f"\nstreaming TTFT (median of 300, sequential): direct {ttft_direct:.3f} ms, "
          f"router {ttft_router:.3f} ms, added {ttft_router - ttft_direct:.3f} ms")
    print(f"router RSS after the runs: {rss:.1f} MB; time to ready (spawn to /readyz 200): {ready_s:.3f} s")
    total = sum(float(m.group(1)) for m in re.finditer(r'^router_requests_total\{[^}]*status="ok"[^}]*\} (\S+)$',
                                                        metrics, re.M))
    print(f"requests metered ok by the proxy: {total:.0f}")
    if money:
        print_money(conns, results, money, money_metrics, args.seconds)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


# ------------------------------------------------------------------------------------ --money

MONEY_KEY = "sk-bench-money"
MONEY_LUA: dict[str, Path] = {}      # target -> its wrk script (numbered request texts)
MONEY_PREFIX = f"router-bench:{os.getpid()}"
_LUA_NUMBERED = """\
wrk.headers["Content-Type"] = "application/json"   -- beside the -H ones (wrk.format with headers drops those)
local n = 0
local run = ""   -- this wrk run's own mark, so that no text repeats from one run to the next
if {unique} then
  local f = io.open("/dev/urandom", "rb")
  run = string.gsub(f:read(6), ".", function(c) return string.format("%02x", string.byte(c)) end) .. "-"
  f:close()
end
request = function()
  n = n + 1
  local body = '{{"model":"auto","temperature":0,"max_tokens":32,"messages":[{{"role":"user","content":' ..
    '"Write a Python function that merges two sorted lists. (' .. run .. (n % {modulo}) .. ')"}}]}}'
  return wrk.format("POST", nil, nil, body)
end
"""
_MONEY = {  # name: (tenant settings, route settings, environment, distinct texts)
    "off": ("", "", {}, 2**31),
    "no-hook": ("", "", {"PYTHONPATH": "{nohook}"}, 2**31),
    "rl": (", rate_limits: {requests_per_minute: 100000000, tokens_per_minute: 1000000000000, concurrent: 100000}",
           "", {}, 2**31),
    "rl-redis": (", rate_limits: {requests_per_minute: 100000000, tokens_per_minute: 1000000000000, "
                 "concurrent: 100000}", "", {"ROUTER_RATE_LIMITS": "{redis}?prefix={prefix}:rl"}, 2**31),
    "miss": ("", ", cache: {ttl_s: 600, max_entries: 1000000}", {}, 2**31),
    "hit": ("", ", cache: {ttl_s: 600, max_entries: 1000000}", {}, 8),
    "hit-redis": ("", ", cache: {ttl_s: 600, max_entries: 1000000}",
                  {"ROUTER_RESPONSE_CACHE": "{redis}?prefix={prefix}:cache"}, 8),
}


def start_money(stack: contextlib.ExitStack, tmp: Path, upstream: str, env: dict[str, str], redis: str,
                targets: list[tuple[str, str, dict[str, str]]], *, suffix: str = "",
                names: tuple[str, ...] | None = None) -> list[str]:
    """Start one `router serve` per --money variant (its own policy and environment), named with
    `suffix` (and keys under their own prefix); add them to `targets`."""
    from router.core.policy import hash_key

    nohook = tmp / "nohook"
    nohook.mkdir(exist_ok=True)
    (nohook / "sitecustomize.py").write_text(
        "from router.engine.admission import Admission\n"
        "Admission.open = lambda self, req, body, **kw: None   # the admission hook removed\n")
    src = str(Path(__file__).resolve().parent.parent / "src")
    started = []
    for name, (tenant, route, extra, modulo) in _MONEY.items():
        if names is not None and name not in names:
            continue
        name += suffix
        policy = tmp / f"money-{name}.yaml"
        policy.write_text(textwrap.dedent(f"""\
            version: 1
            providers:
              local: {{kind: vllm, base_url: "{upstream}", region: eu}}
            models:
              bench: {{provider: local, model: bench-model, price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}}}
            routes:
              coding:  {{targets: [bench]{route}}}
              general: {{targets: [bench]{route}}}
            rules:
              - {{if: {{task: coding}}, route: coding}}
              - {{route: general}}
            tenants:
              acme: {{keys: ["{hash_key(MONEY_KEY)}"]{tenant}}}
            """))
        lua = MONEY_LUA[name] = tmp / f"money-{name}.lua"
        lua.write_text(_LUA_NUMBERED.format(modulo=modulo, unique="true" if modulo > 1000 else "false"))
        prefix = MONEY_PREFIX + (":" + suffix.lstrip("@") if suffix else "")
        v_env = {**env, **{k: v.format(redis=redis, prefix=prefix, nohook=f"{nohook}:{src}")
                           for k, v in extra.items()}}
        port = free_port()
        with open(tmp / f"{name}.log", "wb") as err:
            proc = stack.enter_context(process([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy),
                                                "--port", str(port), "--ledger", str(tmp / f"{name}.db")],
                                               env=v_env, stderr=err))
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        PROXIES[name] = proc
        targets.append((name, f"http://127.0.0.1:{port}/v1/chat/completions",
                        {"Authorization": f"Bearer {MONEY_KEY}"}))
        started.append(name)
    return started


def clear_redis(url: str) -> None:
    """Delete this run's keys (--money) from Redis."""
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=MONEY_PREFIX + ":*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])
    client.close()


def _counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", metrics, re.M):
        if all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def print_money(conns: list[int], results: dict[tuple[str, int], dict[str, float]], money: list[str],
                metrics: dict[str, str], seconds: float) -> None:
    print(f"\nmoney features, each its own router serve (1 worker), same requests with a tenant key, "
          f"temperature 0, wrk -t1 {seconds:g}s per run; ratios against `off` in this run (`x@NAME` against "
          f"`off@NAME`)\n")
    print("rl, rl-redis: requests, tokens and in-flight limits, too high to refuse; miss: every request a "
          "miss, looked up and stored; hit: every request after the first 8 a hit; no-hook: off without "
          "the engine's admission hook\n")
    print(f"{'conns':>5} {'target':>14} {'req/s':>9} {'vs off':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'added p50':>9} {'added p99':>9} {'non-2xx':>7}")
    for c in conns:
        for name in money:
            off = results["off" + (name[name.index("@"):] if "@" in name else ""), c]
            r = results[name, c]
            print(f"{c:>5} {name:>14} {r['rps']:>9.0f} {r['rps'] / off['rps']:>7.3f} {r['p50']:>8.3f} {r['p99']:>8.3f} "
                  f"{r['p50'] - off['p50']:>9.3f} {r['p99'] - off['p99']:>9.3f} {int(r['errors']):>7}")
    for name in money:
        m = metrics[name]
        ok = _counter(m, "router_requests_total", status="ok")
        hits, misses = _counter(m, "router_cache_hits_total"), _counter(m, "router_cache_misses_total")
        limited = _counter(m, "router_rate_limited_total")
        # a store call in flight when its proxy was paused (while another target was measured) times out
        # when it resumes: those are the settle and put errors, not what a client waits for
        front = _counter(m, "router_rate_limit_errors_total", op="admit") + _counter(m, "router_cache_errors_total",
                                                                                     op="get")
        back = _counter(m, "router_rate_limit_errors_total", op="settle") + _counter(m, "router_cache_errors_total",
                                                                                     op="put")
        print(f"{name:>14}: metered ok {ok:.0f}, cache hits {hits:.0f}, misses {misses:.0f}, "
              f"rate-limited {limited:.0f}, store errors: admit/get {front:.0f}, settle/put {back:.0f}")


def start_litellm(stack: contextlib.ExitStack, tmp: Path, upstream: str,
                  exe_name: str = "litellm") -> tuple[str, str, dict[str, str]]:
    exe = shutil.which(exe_name)
    if exe is None:
        raise SystemExit(f"LiteLLM proxy not found ({exe_name}): see benchmarks/README.md for a venv recipe")
    port = free_port()
    key = "sk-" + secrets.token_hex(16)  # the proxy refuses well-known master keys
    cfg = tmp / "litellm.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        model_list:
          - model_name: auto
            litellm_params: {{model: openai/bench-model, api_base: "{upstream}", api_key: none}}
        general_settings: {{master_key: {key}}}
        litellm_settings: {{drop_params: true}}
        """))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    proc = stack.enter_context(process([exe, "--config", str(cfg), "--port", str(port), "--num_workers", "1"],
                                       env=env))
    wait_ready(f"http://127.0.0.1:{port}/health/liveliness", proc, timeout=180)
    PROXIES["litellm"] = proc
    return "litellm", f"http://127.0.0.1:{port}/v1/chat/completions", {"Authorization": f"Bearer {key}"}


def start_portkey(stack: contextlib.ExitStack, prefix: Path, upstream: str) -> tuple[str, str, dict[str, str]]:
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise SystemExit("the Portkey gateway needs node and npm")
    start = prefix / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not start.exists():
        subprocess.run(["npm", "install", "--silent", "--prefix", str(prefix), "@portkey-ai/gateway"],
                       check=True, timeout=300, capture_output=True)
    port = free_port()
    proc = stack.enter_context(process(["node", str(start), f"--port={port}", "--headless"]))
    wait_ready(f"http://127.0.0.1:{port}/", proc, timeout=60)
    PROXIES["portkey"] = proc
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream, "Authorization": "Bearer none"}
    return "portkey", f"http://127.0.0.1:{port}/v1/chat/completions", headers


if __name__ == "__main__":
    raise SystemExit(main())
