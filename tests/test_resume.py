"""Recovery after the first byte, over real sockets: a stream cut after chunks reached the client
continues on the next candidate that can prefill (vLLM's continue_final_message, DeepSeek's and
Mistral's prefix completion), spliced into the same client stream, metered as one request with
two attempts; a candidate without prefill is skipped, and tool-call streams are not resumed.
"""

from __future__ import annotations

import contextlib

import openai
import pytest

from router import Router
from router.core.errors import UpstreamFailed
from router.core.meter import MemoryMeter
from router.dev.simulator import ModelConfig, Simulator, count_prompt_tokens
from router.monitor.monitor import Monitor
from tests.fleet_support import PRICE, CountingMeter, collect, fleet_policy, msgs, settle
from tests.reliability_support import start_proxy

FULL = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the"   # 16 words


@contextlib.asynccontextmanager
async def servers(*kinds: str):
    """One simulated server per kind (the first one is cut mid-stream)."""
    sims = [Simulator(models=[ModelConfig("q", reply_tokens=16)]) for _ in kinds]
    for s in sims:
        await s.start()
    try:
        yield sims
    finally:
        for s in sims:
            await s.stop()


def policy_for(sims, kinds, resume: str = "{attempts: 1}"):
    names = [f"{k}{i}" for i, k in enumerate(kinds)]
    providers = "\n".join(f'  {n}: {{kind: {k}, base_url: "{s.base_url}", api_key: "k"}}'
                          for n, k, s in zip(names, kinds, sims, strict=True))
    models = "\n".join(f"  m{i}: {{provider: {n}, model: q, price: {PRICE}, capabilities: [tools]}}"
                       for i, n in enumerate(names))
    targets = ", ".join(f"m{i}" for i in range(len(names)))
    return fleet_policy(providers, models, f"  general: {{targets: [{targets}], resume: {resume}}}"), names


async def stream_text(router: Router, **kw) -> tuple[str, object]:
    s = await router.acomplete(msgs(), task="general", stream=True, **kw)
    return await collect(s), s.router


async def test_a_cut_stream_continues_on_the_next_prefill_candidate_skipping_one_without():
    kinds = ("vllm", "openai", "vllm")
    async with servers(*kinds) as (cut, no_prefill, good):
        policy, names = policy_for((cut, no_prefill, good), kinds)
        counting, mem = CountingMeter(), MemoryMeter()
        monitor = Monitor(policy, background=False)
        r = Router(policy, meters=[mem, counting], monitor=monitor)
        try:
            cut.inject("drop-mid-stream:4")                   # role chunk + "The quick brown", then the line drops
            text, info = await stream_text(r, max_tokens=40)
            assert text == FULL                                # one stream, as if nothing had happened
            assert info.status == "ok" and info.resumed == 1 and info.provider == names[2]
            assert [(a.provider, a.outcome) for a in info.attempts] == [(names[0], "protocol_error"),
                                                                         (names[2], "ok")]
            assert no_prefill.request_count == 0               # openai cannot prefill: skipped
            body = good.requests[-1].body
            assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
            assert body["messages"][-1] == {"role": "assistant", "content": "The quick brown"}
            assert body["max_tokens"] < 40                     # what was already produced is taken off
            # metered once, both attempts: the cut one estimated (15 characters: 4 tokens, its prompt as
            # decided), the continuation as its server reported it (13 words, the prefix in its prompt)
            decided = r.explain(msgs(), task="general").prompt_tokens
            assert info.prompt_tokens == decided + count_prompt_tokens(body["messages"])
            assert info.completion_tokens == 4 + 13 and info.usage_estimated
            assert info.cost_usd == pytest.approx(info.prompt_tokens * 1e-6 + info.completion_tokens * 2e-6)
            await settle()
            assert len(mem.records) == 1 and all(v == 0 for v in counting.inflight.values())
            assert all(v == 0 for v in monitor.health.inflight.values()) and not monitor._active
        finally:
            await r.aclose()


async def test_without_a_prefill_candidate_the_cut_surfaces():
    kinds = ("vllm", "openai")
    async with servers(*kinds) as (cut, no_prefill):
        policy, _ = policy_for((cut, no_prefill), kinds)
        r = Router(policy, meters=[mem := MemoryMeter()], monitor=Monitor(policy, background=False))
        try:
            cut.inject("drop-mid-stream:4")
            s = await r.acomplete(msgs(), task="general", stream=True)
            seen = []
            with pytest.raises(UpstreamFailed, match="no other candidate could continue it"):
                async for chunk in s:
                    seen.append(chunk.choices[0].delta.content or "")
            assert "".join(seen) == "The quick brown"
            assert no_prefill.request_count == 0
            assert mem.records[0].status == "error" and mem.records[0].resumed == 0
        finally:
            await r.aclose()


async def test_resume_is_opt_in_per_route():
    kinds = ("vllm", "vllm")
    async with servers(*kinds) as (cut, other):
        policy, _ = policy_for((cut, other), kinds, resume="false")
        r = Router(policy, monitor=Monitor(policy, background=False))
        try:
            cut.inject("drop-mid-stream:4")
            with pytest.raises(UpstreamFailed, match="stream interrupted"):
                await stream_text(r)
            assert other.request_count == 0
        finally:
            await r.aclose()


@pytest.mark.parametrize("kind", ["deepseek", "mistral"])
async def test_deepseek_and_mistral_continue_with_prefix_completion(kind):
    kinds = ("vllm", kind)
    async with servers(*kinds) as (cut, prefix):
        policy, names = policy_for((cut, prefix), kinds)
        r = Router(policy, monitor=Monitor(policy, background=False))
        try:
            cut.inject("drop-mid-stream:3")
            text, info = await stream_text(r)
            assert text == FULL and info.provider == names[1] and info.resumed == 1
            req = prefix.requests[-1]
            assert req.body["messages"][-1] == {"role": "assistant", "content": "The quick", "prefix": True}
            assert "continue_final_message" not in req.body
            assert req.path == ("/beta/chat/completions" if kind == "deepseek" else "/v1/chat/completions")
        finally:
            await r.aclose()


async def test_a_tool_call_stream_is_not_resumed():
    kinds = ("vllm", "vllm")
    async with servers(*kinds) as (cut, other):
        policy, _ = policy_for((cut, other), kinds)
        r = Router(policy, monitor=Monitor(policy, background=False))
        tools = [{"type": "function", "function": {"name": "run", "parameters": {"type": "object",
                  "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}}]
        try:
            cut.inject("drop-mid-stream:3")
            s = await r.acomplete(msgs("CALL_TOOL:run"), task="general", stream=True, tools=tools)
            with pytest.raises(UpstreamFailed):
                async for _ in s:
                    pass
            assert other.request_count == 0
        finally:
            await r.aclose()


async def test_the_client_of_the_proxy_sees_one_unbroken_stream():
    kinds = ("vllm", "vllm")
    async with servers(*kinds) as (cut, good):
        policy, names = policy_for((cut, good), kinds)
        p = await start_proxy(policy)
        try:
            cut.inject("drop-mid-stream:6")
            client = openai.AsyncOpenAI(base_url=p.url + "/v1", api_key="x", max_retries=0)
            stream = await client.chat.completions.create(model="auto", messages=msgs(), stream=True,
                                                          extra_headers={"X-Router-Task": "general"})
            ids, parts = set(), []
            async for chunk in stream:
                ids.add(chunk.id)
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            assert "".join(parts) == FULL and len(ids) == 1      # one completion id across the splice
            [info] = p.mem.records
            assert info.resumed == 1 and [a.provider for a in info.attempts] == names
        finally:
            await p.stop()
