"""What the Anthropic Messages and OpenAI Responses translations cost per request, against chat.

    python benchmarks/bench_agents.py                 # ~1 minute on 2 cores
    python benchmarks/bench_agents.py --cycles 6000

One run, all on 127.0.0.1: the static upstream (benchmarks/static_upstream.py) and ``router serve``
(one worker, its default meters: Prometheus and an SQLite ledger). One keep-alive connection per
target sends the same prompt, one request at a time, to ``/v1/chat/completions``, ``/v1/messages``
and ``/v1/responses``, as JSON and as a stream (read to its end). The targets take turns request by request (A B C D E F,
A B C ...), so load on a noisy machine hits all of them alike; the figure is the median, over
cycles, of a target's latency minus chat's in the same cycle (JSON against JSON, stream against
stream). It also times the translators alone in this process (request in, answer or stream out;
the best of five runs), which is the work the translation adds: on a loaded machine the latency
difference stretches with the load, that work does not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, static_upstream, wait_port  # noqa: E402

PROMPT = "Write a Python function that merges two sorted lists."
BODIES = {
    "chat": {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32},
    "messages": {"model": "auto", "max_tokens": 32, "messages": [{"role": "user", "content": PROMPT}]},
    "responses": {"model": "auto", "input": PROMPT, "max_output_tokens": 32},
}
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def request_bytes(api: str, stream: bool, port: int) -> bytes:
    body = orjson.dumps({**BODIES[api], "stream": stream})
    return (f"POST {PATHS[api]} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked) to its end; return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    start = lower.index(b"content-length:") + 15
    length = int(lower[start:lower.index(b"\r\n", start)])
    await reader.readexactly(length)
    return status


async def measure(port: int, cycles: int) -> dict[tuple[str, bool], list[float]]:
    """Latency of each target, request by request: every cycle sends one request to each target in
    turn, so the targets of one cycle see the same machine (pairs are compared within a cycle)."""
    targets = [(api, stream) for stream in (False, True) for api in ("chat", "messages", "responses")]
    conns = {}
    for t in targets:
        conns[t] = (*(await asyncio.open_connection("127.0.0.1", port)), request_bytes(*t, port))

    async def one(t: tuple[str, bool]) -> float:
        reader, writer, req = conns[t]
        t0 = time.perf_counter()
        writer.write(req)
        status = await read_response(reader)
        if status != 200:
            raise SystemExit(f"{t}: HTTP {status}")
        return time.perf_counter() - t0

    times: dict[tuple[str, bool], list[float]] = {t: [] for t in targets}
    warmup = max(50, cycles // 20)
    for cycle in range(warmup + cycles):
        for t in targets:
            elapsed = await one(t)
            if cycle >= warmup:
                times[t].append(elapsed)
    for _, writer, _ in conns.values():
        writer.close()
    return times


def translation_cost(n: int = 5000) -> dict[tuple[str, bool], float]:
    """Microseconds per request spent in the translators alone (in and out), this process."""
    from router.server import anthropic_messages as am
    from router.server import openai_responses as orr

    completion = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
              {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
               "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}]

    def messages_json() -> None:
        _, reply = am.to_chat(BODIES["messages"])
        orjson.dumps(am.from_chat(completion, reply, "msg_1"))

    def messages_stream() -> None:
        _, reply = am.to_chat({**BODIES["messages"], "stream": True})
        s = am.MessagesStream(reply, "msg_1", 12)
        for c in chunks:
            s.feed(c)
        s.finish()

    def responses_json() -> None:
        _, reply = orr.to_chat(BODIES["responses"])
        orjson.dumps(orr.from_chat(completion, reply, "resp_1", 0))

    def responses_stream() -> None:
        _, reply = orr.to_chat({**BODIES["responses"], "stream": True})
        s = orr.ResponsesStream(reply, "resp_1", 0, 12)
        for c in chunks:
            s.feed(c)
        s.finish()

    out = {}
    for key, fn in ((("messages", False), messages_json), (("messages", True), messages_stream),
                    (("responses", False), responses_json), (("responses", True), responses_stream)):
        fn()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        out[key] = best * 1e6
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=3000, help="requests per target (one to each target per cycle)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="router-bench-agents-"))
    with static_upstream() as upstream:
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
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "ROUTER_LEDGER")}
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy), "--port",
                                 str(port), "--ledger", str(tmp / "ledger.db")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, 60)
            times = asyncio.run(measure(port, args.cycles))
        finally:
            proc.terminate()
            proc.wait(30)
    alone = translation_cost()
    load = os.getloadavg()[0]
    print(f"\nrouter serve, 1 worker, Prometheus meter and SQLite ledger on, model=auto (classifier on); one "
          f"connection per target, {args.cycles} cycles of one request to each target in turn; "
          f"{os.cpu_count()} cores, load average {load:.1f}\n")
    print(f"{'mode':>6} {'API':>10} {'p50 us':>8} {'p90 us':>8} {'added latency us':>17} {'translators alone us':>21}")
    worst = 0.0
    for stream in (False, True):
        base = times["chat", stream]
        for api in ("chat", "messages", "responses"):
            t = times[api, stream]
            ordered = sorted(t)
            p50, p90 = statistics.median(t), ordered[int(0.9 * len(t))]
            cells = ["", ""]
            if api != "chat":
                added = statistics.median(a - b for a, b in zip(t, base, strict=True)) * 1e6
                worst = max(worst, added)
                cells = [f"{added:17.1f}", f"{alone[api, stream]:21.1f}"]
            print(f"{'stream' if stream else 'JSON':>6} {api:>10} {p50 * 1e6:8.0f} {p90 * 1e6:8.0f} "
                  f"{cells[0]:>17} {cells[1]:>21}")
    print(f"\nlargest added latency: {worst:.1f} us per request (target: at most 50 us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
