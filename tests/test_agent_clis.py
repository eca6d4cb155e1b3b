"""The real coding agents, end to end: Claude Code (`claude -p`) and Codex (`codex exec`) from npm,
through `router serve` (a real process) over the simulator.

Each run checks what the user sees (the answer, a file the agent's tool wrote, the error text) and
what router did (the ledger: API, route, provider, status, one row per model call). The CLIs are the
versions pinned in .ci/agent-clis.txt, installed into .cache/agent-clis by .ci/run (or here, with
npm, on first use); without npm these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from router.core.policy import hash_key
from router.dev.simulator import ModelConfig, Simulator
from router.metering.ledger import open_ledger

from .conftest import ROOT

pytestmark = pytest.mark.timeout(900)  # the first run may install the CLIs (about 800 MB)

PINS = [line.strip() for line in (ROOT / ".ci" / "agent-clis.txt").read_text().splitlines() if line.strip()]
KEY, EU_KEY = "sk-agents-e2e", "sk-agents-eu"
ANSWER = "The quick brown fox jumps over the lazy dog."

POLICY = """
version: 1
providers:
  gpu-eu: {{kind: vllm, base_url: "{gpu}", region: eu}}
  oa:     {{kind: openai, base_url: "{oa}", api_key: "sk-oa-secret", region: us}}
models:
  coder: {{provider: gpu-eu, model: Qwen/Qwen3-Coder-Next, price: {{input_per_mtok: 0.05, output_per_mtok: 0.2}},
           capabilities: [tools]}}
  mini:  {{provider: oa, model: gpt-4.1-mini, price: {{input_per_mtok: 0.4, output_per_mtok: 1.6}},
           capabilities: [tools]}}
routes:
  coding: {{targets: [coder, mini]}}
  cheap:  {{targets: [mini]}}
client_models:
  claude-haiku-*: cheap
  claude-*: auto
rules:
  - {{if: {{api: [messages, responses], tools: true}}, route: coding}}
  - {{route: cheap}}
residency:
  eu: [eu]
tenants:
  dev:  {{keys: ["{dev}"]}}
  acme: {{keys: ["{acme}"], residency: eu}}
"""


def _version(prefix: Path, package: str) -> str | None:
    try:
        return json.loads((prefix / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def clis() -> SimpleNamespace:
    prefix = Path(os.environ.get("ROUTER_AGENT_CLIS") or ROOT / ".cache" / "agent-clis")
    missing = [spec for spec in PINS if _version(prefix, spec.rpartition("@")[0]) != spec.rpartition("@")[2]]
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: the Claude Code and Codex end-to-end tests need it to install "
                        f"{', '.join(PINS)} (.ci/run does)")
        done = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error",
                               *PINS], capture_output=True, text=True, timeout=840)
        assert done.returncode == 0, done.stdout + done.stderr
    bins = prefix / "node_modules" / ".bin"
    return SimpleNamespace(claude=str(bins / "claude"), codex=str(bins / "codex"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Two simulated providers (threads) and `router serve --access-log` (a process) in front of them."""
    tmp = tmp_path_factory.mktemp("agents")
    gpu = Simulator(models=[ModelConfig("Qwen/Qwen3-Coder-Next")]).start_in_thread()
    oa = Simulator(models=["gpt-4.1-mini"], require_api_key="sk-oa-secret").start_in_thread()
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(gpu=gpu.base_url, oa=oa.base_url, dev=hash_key(KEY), acme=hash_key(EU_KEY)))
    port, ledger = _free_port(), tmp / "ledger.db"
    err = tmp / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(policy), "--port", str(port),
                             "--ledger", str(ledger), "--access-log"],
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert proc.poll() is None, err.read_text()
            time.sleep(0.05)
    yield SimpleNamespace(url=url, gpu=gpu.sim, oa=oa.sim, ledger=ledger, log=err, tmp=tmp)
    proc.terminate()
    proc.wait(30)
    gpu.stop()
    oa.stop()


def rows(stack, since: float) -> list:
    """Ledger rows of requests that arrived after `since` (router serve flushes within 200 ms)."""
    time.sleep(0.5)
    ledger = open_ledger(stack.ledger)
    try:
        return ledger.records(since=since)
    finally:
        ledger.close()


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- Claude Code

def claude_env(stack, home: Path, **extra: str) -> dict[str, str]:
    """The docs/agents.md recipe: the base URL is the root, no calls home."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": stack.url,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS": "1",
            "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "200000", **extra}


def test_claude_code_answers_through_router(clis, stack, tmp_path):
    since = time.time()
    r = run([clis.claude, "-p", "Say hello", "--output-format", "json"],
            claude_env(stack, tmp_path / "home", ANTHROPIC_API_KEY=KEY), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert not out["is_error"] and out["result"].startswith(ANSWER)
    assert out["usage"]["output_tokens"] == 16
    [row] = rows(stack, since)
    assert (row.api, row.tenant, row.route, row.provider, row.status) == ("messages", "dev", "coding", "gpu-eu", "ok")
    assert "api=messages route=coding provider=gpu-eu model=coder status=200" in stack.log.read_text()


def test_claude_code_runs_a_tool_the_model_asked_for(clis, stack, tmp_path):
    since = time.time()
    prompt = 'CALL_TOOL:Bash {"command": "echo router-e2e-ok > e2e.txt", "description": "write a marker"}'
    r = run([clis.claude, "-p", prompt, "--allowedTools", "Bash"],
            claude_env(stack, tmp_path / "home", ANTHROPIC_AUTH_TOKEN=KEY), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "e2e.txt").read_text().strip() == "router-e2e-ok"
    assert r.stdout.strip().startswith(ANSWER)
    sent = stack.gpu.requests[-1].body["messages"]
    assert sent[-1]["role"] == "tool"  # the tool's result went back to the model, as a tool message
    assert [(x.api, x.route, x.status) for x in rows(stack, since)] == [("messages", "coding", "ok")] * 2


def test_claude_code_reports_a_wrong_key_at_once(clis, stack, tmp_path):
    since = time.time()
    started = time.monotonic()
    r = run([clis.claude, "-p", "Say hello"], claude_env(stack, tmp_path / "home", ANTHROPIC_API_KEY="wrong"),
            tmp_path, timeout=60)
    assert r.returncode == 1 and "401 invalid API key" in r.stdout, r.stdout + r.stderr
    assert time.monotonic() - started < 30  # x-should-retry: false stops Claude Code's own retry loop
    assert [(x.api, x.status) for x in rows(stack, since)] == [("messages", "error")]


def test_an_eu_tenants_claude_code_session_stays_in_the_eu(clis, stack, tmp_path):
    since = time.time()
    before = len(stack.oa.requests)
    r = run([clis.claude, "-p", "Say hello", "--output-format", "json"],
            claude_env(stack, tmp_path / "home", ANTHROPIC_API_KEY=EU_KEY), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = rows(stack, since)
    assert (row.tenant, row.provider, row.region) == ("acme", "gpu-eu", "eu")
    assert len(stack.oa.requests) == before


# ---------------------------------------------------------------------------- Codex

def codex_env(stack, root: Path, key: str = KEY) -> dict[str, str]:
    """The docs/agents.md recipe: a `router` provider speaking the Responses API, no built-in web search."""
    home, codex_home = root / "home", root / "codex_home"
    home.mkdir(parents=True, exist_ok=True)
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(f"""
model = "auto"
model_provider = "router"
web_search = "disabled"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false

[model_providers.router]
name = "router"
base_url = "{stack.url}/v1"
env_key = "ROUTER_API_KEY"
wire_api = "responses"
""")
    return {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(codex_home), "ROUTER_API_KEY": key}


def agent_messages(stdout: str) -> list[str]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e["item"]["text"] for e in events
            if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"]


def test_codex_answers_through_router(clis, stack, tmp_path):
    since = time.time()
    work = tmp_path / "work"
    work.mkdir()
    r = run([clis.codex, "exec", "--skip-git-repo-check", "--json", "Say hello"], codex_env(stack, tmp_path), work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert agent_messages(r.stdout) == [ANSWER + " The quick brown fox jumps over the"]
    [row] = rows(stack, since)
    assert (row.api, row.route, row.provider, row.status) == ("responses", "coding", "gpu-eu", "ok")


def test_codex_runs_a_command_the_model_asked_for(clis, stack, tmp_path):
    since = time.time()
    work = tmp_path / "work"
    work.mkdir()
    prompt = 'CALL_TOOL:exec_command {"cmd": "echo router-e2e-ok > e2e.txt"}'
    r = run([clis.codex, "exec", "--skip-git-repo-check", "--json", "--sandbox", "workspace-write", prompt],
            codex_env(stack, tmp_path), work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "e2e.txt").read_text().strip() == "router-e2e-ok"
    assert agent_messages(r.stdout)[-1].startswith(ANSWER)
    assert stack.gpu.requests[-1].body["messages"][-1]["role"] == "tool"
    assert [(x.api, x.route, x.status) for x in rows(stack, since)] == [("responses", "coding", "ok")] * 2


def test_codex_reports_a_wrong_key(clis, stack, tmp_path):
    since = time.time()
    work = tmp_path / "work"
    work.mkdir()
    r = run([clis.codex, "exec", "--skip-git-repo-check", "Say hello"], codex_env(stack, tmp_path, key="wrong"), work)
    assert r.returncode == 1 and "401" in r.stderr and "invalid API key" in r.stderr, r.stderr[-2000:]
    records = rows(stack, since)  # Codex retries a 401 itself: each try is one metered refusal
    assert records and {(x.api, x.status) for x in records} == {("responses", "error")}
