"""`router report`: ledger summaries in every format, the plot, and price comparisons."""

from __future__ import annotations

import csv
import io
import json

import pytest

from router.cli import main
from router.metering.ledger import SQLiteLedger
from router.tools.report import parse_tokens, parse_when

from .test_ledger import _rec

DAY = 86400.0
T0 = 1_700_000_000.0


@pytest.fixture
def ledger_path(tmp_path):
    path = str(tmp_path / "ledger.db")
    ledger = SQLiteLedger(path)
    ledger.write([
        _rec(1, ts=T0, tenant="acme", route="coding", cost_usd=0.5, reference_cost_usd=2.0),
        _rec(2, ts=T0 + 10, tenant="acme", route="general", provider="ds", model="ds-chat", cost_usd=0.25,
             reference_cost_usd=1.0),
        _rec(3, ts=T0 + DAY, tenant="beta", route="general", provider="ds", model="ds-chat", cost_usd=0.0,
             reference_cost_usd=None, status="error", prompt_tokens=0, completion_tokens=0),
    ])
    ledger.close()
    return path


def run_report(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_by_tenant(ledger_path, capsys):
    code, out, _ = run_report(capsys, "--ledger", ledger_path, "--by", "tenant", "--format", "json")
    assert code == 0
    rows = {r["tenant"]: r for r in json.loads(out)}
    assert rows["acme"]["requests"] == 2 and rows["acme"]["cost_usd"] == 0.75
    assert rows["acme"]["savings_usd"] == 2.25 and rows["acme"]["error_rate"] == 0
    assert rows["beta"]["error_rate"] == 1.0 and rows["beta"]["savings_usd"] == 0


def test_csv_and_time_window(ledger_path, capsys):
    code, out, _ = run_report(capsys, "--ledger", f"sqlite:///{ledger_path}", "--by", "route", "--format", "csv",
                              "--since", str(T0 + 5), "--until", str(T0 + 2 * DAY))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["route"], r["requests"], r["errors"]) for r in rows] == [("general", "2", "1")]


def test_table_is_readable(ledger_path, capsys):
    code, out, _ = run_report(capsys, "--ledger", ledger_path, "--by", "provider")
    assert code == 0
    header, rule, *body = out.strip().splitlines()
    assert header.split()[:3] == ["provider", "requests", "errors"] and set(rule.replace(" ", "")) == {"-"}
    assert body[0].startswith("gpu") and len(body) == 2


def test_plot_draws_a_png(ledger_path, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "spend.png"
    code, _, err = run_report(capsys, "--ledger", ledger_path, "--by", "tenant", "--plot", str(png))
    assert code == 0 and "wrote" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_ledger_is_an_error(tmp_path, capsys):
    code, _, err = run_report(capsys, "--ledger", str(tmp_path / "none.db"))
    assert code == 1 and "no ledger" in err


def test_compare_reproduces_a_monthly_cost_table(capsys):
    # 100M tokens a month, 75% prompt: self-hosted vs DeepSeek vs GPT-4.1-mini vs Claude Sonnet
    code, out, _ = run_report(capsys, "--compare",
                              "self-hosted=0.03/0.03,deepseek-v3=0.28/0.42,gpt-4.1-mini=0.4/1.6,claude-sonnet=3/15",
                              "--tokens", "100M", "--input-share", "0.75", "--format", "json")
    assert code == 0
    cost = {r["model"]: r["cost_usd"] for r in json.loads(out)}
    assert cost == {"self-hosted": 3.0, "deepseek-v3": 31.5, "gpt-4.1-mini": 70.0, "claude-sonnet": 600.0}
    assert json.loads(out)[3]["vs_cheapest"] == "200.0x"


def test_compare_reads_aliases_from_the_policy(example_env, capsys):
    code, out, _ = run_report(capsys, "--compare", "qwen3-coder-next,claude=3/15", "--tokens", "1B",
                              "--input-share", "0.5", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["model"] == "qwen3-coder-next" and float(rows[0]["cost_usd"]) == 30.0
    assert float(rows[1]["cost_usd"]) == 9000.0


def test_compare_rejects_unknown_models(example_env, capsys):
    code, _, err = run_report(capsys, "--compare", "nope")
    assert code == 1 and "unknown model 'nope'" in err


def test_parsers():
    assert parse_tokens("100M") == 100e6 and parse_tokens("2.5b") == 2.5e9 and parse_tokens("750k") == 750e3
    assert parse_when("7d", now=10 * DAY) == 3 * DAY
    assert parse_when("2023-11-14") == 1699920000.0
    with pytest.raises(ValueError):
        parse_when("yesterday")
