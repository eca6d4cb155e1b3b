"""Users teach the classifier their own tasks: `router train`, `router eval`, the policy's
`classifier: {model: ...}`, `router check`, `router explain`, and routing through `router serve`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from router.classify.classifier import Classifier
from router.core.decision import decide
from router.core.errors import InvalidRequest
from router.core.policy_parser import PolicyError, load_policy, parse_policy
from router.dev.simulator import Simulator

from .test_proxy_serve import free_port

SQL = [
    "SELECT name FROM users WHERE age > 30 ORDER BY name",
    "write a query that counts orders per customer",
    "join the orders and customers tables on customer_id and show the total per city",
    "how do I add an index on the email column in postgres",
    "delete duplicate rows from the payments table but keep the oldest",
    "group sales by month and sum the amount, only 2024",
    "which customers never placed an order? tables: customers(id, name), orders(id, customer_id)",
    "update the status column to 'archived' for rows older than a year",
    "left join vs inner join, which one keeps the unmatched rows from products",
    "create a table for invoices with a foreign key to clients",
    "top 5 products by revenue from order_items",
    "my query with GROUP BY says column must appear in the aggregate function",
]
TRANSLATION = [
    "translate 'good morning, how are you' into French",
    "what is 'thank you very much' in Japanese",
    "please translate this paragraph to German: The meeting has been moved to Friday afternoon.",
    "render this sentence in Spanish: where is the train station?",
    "how do you say 'I am allergic to peanuts' in Italian",
    "translate to English: Je voudrais réserver une table pour deux personnes.",
    "put this into Portuguese for my landlord: the heating is broken again",
    "Korean translation of 'see you tomorrow' please",
    "can you translate my out-of-office message into Dutch",
    "English to Chinese: the package will arrive on Monday",
    "translate the menu items below into English: Schnitzel, Knödel, Apfelstrudel",
    "what does 'carpe diem' mean, translated literally",
]
CHAT = [
    "tell me a joke about cats",
    "how was your weekend",
    "recommend a good science fiction novel",
    "what's a nice name for a golden retriever puppy",
    "i'm bored, any ideas for tonight",
    "write a short birthday message for my sister",
    "what should I cook for dinner with eggs and spinach",
    "give me three tips to sleep better",
    "is it worth visiting Lisbon in November",
    "hello! who are you?",
    "suggest a podcast about history",
    "how do I stay motivated when working from home",
]


def labelled() -> list[dict]:
    return ([{"text": t, "task": "sql"} for t in SQL] + [{"text": t, "task": "translation"} for t in TRANSLATION]
            + [{"text": t, "task": "chat"} for t in CHAT])


def router_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


POLICY = """
version: 1
providers:
  sim: {{kind: vllm, base_url: "{url}", region: eu}}
models:
  sql-model: {{provider: sim, model: model-sql, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  translator: {{provider: sim, model: model-translate, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  chat-model: {{provider: sim, model: model-chat, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
  sql: {{targets: [sql-model]}}
  translation: {{targets: [translator]}}
  chat: {{targets: [chat-model]}}
rules:
  - {{if: {{task: sql}}, route: sql}}
  - {{if: {{task: translation}}, route: translation}}
  - {{route: chat}}
classifier: {{model: models/tasks.json.gz{extra}}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model trained by `router train` on the rows above, in `<dir>/models/tasks.json.gz`."""
    root = tmp_path_factory.mktemp("custom")
    data = root / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in labelled()))
    (root / "models").mkdir()
    out = router_cli("train", "--data", str(data), "--out", str(root / "models" / "tasks.json.gz"))
    assert out.returncode == 0, out.stderr
    assert "tasks chat, sql, translation" in out.stdout
    return root


def test_train_writes_a_model_with_the_free_task_names(trained: Path) -> None:
    clf = Classifier.load(trained / "models" / "tasks.json.gz")
    assert clf.classes == ("chat", "sql", "translation")
    # prompts the model never saw
    assert clf.classify([{"role": "user", "content": "sum of revenue per region from the sales table"}]).task == "sql"
    assert clf.classify([{"role": "user", "content": "translate 'where is the bathroom' to French"}]).task == "translation"
    assert clf.classify([{"role": "user", "content": "any tips for a first date?"}]).task == "chat"
    # the pure-Python path gives the same result as the C accelerator on a custom model too
    py = Classifier.load(trained / "models" / "tasks.json.gz", native=False)
    for row in labelled():
        m = [{"role": "user", "content": row["text"]}]
        assert py.classify(m) == clf.classify(m)


def test_train_is_reproducible_byte_for_byte(trained: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.json.gz"
    out = router_cli("train", "--data", str(trained / "labelled.jsonl"), "--out", str(again))
    assert out.returncode == 0, out.stderr
    assert again.read_bytes() == (trained / "models" / "tasks.json.gz").read_bytes()


def test_train_with_shipped_data_keeps_the_shipped_tasks(trained: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "with-shipped.json.gz"
    sql_only = tmp_path / "sql.jsonl"
    sql_only.write_text("".join(json.dumps({"text": t, "task": "sql"}) + "\n" for t in SQL))
    # The shipped data labels SQL asks `coding`: beside ~15,000 shipped rows a dozen of the user's
    # rows need more weight to carve `sql` out of `coding` (docs/classifier.md, "Your own tasks":
    # it learns these rows and their near paraphrases, and generalises poorly beyond them; 3 was
    # enough until the shipped data gained SQL-aggregate asks labelled `coding`).
    out = router_cli("train", "--data", str(sql_only), "--with-shipped-data", "--data-weight", "5",
                     "--out", str(out_path))
    assert out.returncode == 0, out.stderr
    clf = Classifier.load(out_path)
    assert clf.classes == ("coding", "general", "reasoning", "sql")
    assert clf.trained_on["with_shipped_data"] is True and clf.temperature == Classifier.load().temperature
    ask = {"sql": "average order value per country from the orders table",
           "reasoning": "A train leaves at 3pm at 60 mph; when has it covered 150 miles?",
           "general": "write a short poem about autumn leaves", "coding": "fix this: TypeError: 'NoneType' is not iterable"}
    assert {task: clf.classify([{"role": "user", "content": text}]).task for task, text in ask.items()} == \
        {task: task for task in ask}


def test_train_explains_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi"}\n')
    out = router_cli("train", "--data", str(bad), "--out", str(tmp_path / "m.json.gz"))
    assert out.returncode == 2 and "bad.jsonl:1: `task` must be a non-empty string" in out.stderr
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "hi", "task": "chat"}\n{"text": "yo", "task": "chat"}\n')
    out = router_cli("train", "--data", str(one), "--out", str(tmp_path / "m.json.gz"))
    assert out.returncode == 2 and "at least two tasks" in out.stderr


def test_eval_prints_every_figure(trained: Path) -> None:
    out = router_cli("eval", "--data", str(trained / "labelled.jsonl"), "--model",
                     str(trained / "models" / "tasks.json.gz"), "--min-confidence", "0.8")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "36 rows, accuracy" in text
    for piece in ("precision", "recall", "confusion", "language groups: English", "expected calibration error",
                  "min_confidence 0.8:", "of requests go to the fallback"):
        assert piece in text, piece
    js = router_cli("eval", "--data", str(trained / "labelled.jsonl"), "--model",
                    str(trained / "models" / "tasks.json.gz"), "--json")
    figures = json.loads(js.stdout)
    assert figures["rows"] == 36 and set(figures["tasks"]) == {"chat", "sql", "translation"}
    assert 0 <= figures["calibration_error"] <= 1


def test_policy_names_the_model_relative_to_itself(trained: Path) -> None:
    path = trained / "policy.yaml"
    path.write_text(POLICY.format(url="http://127.0.0.1:9/v1", extra=""))
    policy = load_policy(path)
    assert policy.classifier.tasks == ("chat", "sql", "translation")
    d = decide(policy, {"model": "auto", "messages": [{"role": "user", "content": "count the rows of the users table"}]})
    assert (d.task, d.route, d.task_source) == ("sql", "sql", "classifier")
    assert set(d.to_dict()["scores"]) == {"chat", "sql", "translation"}
    # a task hint must be one of the model's tasks
    assert decide(policy, {"messages": [{"role": "user", "content": "x"}]}, task="translation").route == "translation"
    with pytest.raises(InvalidRequest, match="unknown task 'coding'; use one of: chat, sql, translation"):
        decide(policy, {"messages": [{"role": "user", "content": "x"}]}, task="coding")
    assert router_cli("check", str(path)).returncode == 0


def test_check_rejects_rules_on_tasks_the_model_lacks(trained: Path) -> None:
    path = trained / "bad-policy.yaml"
    path.write_text(POLICY.format(url="http://127.0.0.1:9/v1", extra="").replace("task: translation", "task: translate"))
    out = router_cli("check", str(path))
    assert out.returncode == 1
    assert "rules[1].if.task: unknown task 'translate'" in out.stderr and "did you mean 'translation'" in out.stderr
    missing = trained / "missing-policy.yaml"
    missing.write_text(POLICY.format(url="http://127.0.0.1:9/v1", extra="").replace("models/tasks", "nowhere/tasks"))
    out = router_cli("check", str(missing))
    assert out.returncode == 1 and "classifier.model: no model file at" in out.stderr
    with pytest.raises(PolicyError, match="the model has no `general` task"):
        parse_policy(POLICY.format(url="http://x/v1", extra=", min_confidence: 0.5").replace(
            "models/tasks.json.gz", str(trained / "models" / "tasks.json.gz")))


def test_explain_shows_every_task_score(trained: Path) -> None:
    path = trained / "policy.yaml"
    path.write_text(POLICY.format(url="http://127.0.0.1:9/v1", extra=""))
    out = router_cli("explain", "--policy", str(path), "translate 'good night' into Spanish")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["task"] == "translation" and d["route"] == "translation"
    assert set(d["scores"]) == {"chat", "sql", "translation"}
    assert abs(sum(d["scores"].values()) - 1) < 1e-3 and d["scores"]["translation"] == d["confidence"]


def test_uncertain_requests_go_to_the_fallback_route(trained: Path) -> None:
    path = trained / "fallback-policy.yaml"
    path.write_text(POLICY.format(url="http://127.0.0.1:9/v1",
                                  extra=", min_confidence: 0.99, fallback_task: chat, fallback_route: chat"))
    policy = load_policy(path)
    d = decide(policy, {"messages": [{"role": "user", "content": "hmm"}]})
    assert (d.task_source, d.route, d.rule) == ("fallback", "chat", None)
    assert d.to_dict()["classified_task"] in ("chat", "sql", "translation")


async def test_a_rule_on_a_custom_task_routes_there_through_router_serve(trained: Path, tmp_path: Path) -> None:
    async with Simulator(models=["model-sql", "model-translate", "model-chat"]) as sim:
        path = trained / "serve-policy.yaml"
        path.write_text(POLICY.format(url=sim.base_url, extra=""))
        port = free_port()
        env = {**os.environ, "ROUTER_LEDGER": str(tmp_path / "ledger.db")}
        with open(tmp_path / "stderr.log", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--policy", str(path),
                                     "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(400):
                    try:
                        async with http.get(url + "/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
                    await asyncio.sleep(0.05)
                routed = {}
                for prompt in ("list the ten most recent orders with the customer's email",
                               "translate 'the invoice is attached' into German",
                               "any idea what to do on a rainy sunday?"):
                    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
                    async with http.post(url + "/v1/chat/completions", json=body) as r:
                        assert r.status == 200, await r.text()
                        routed[prompt[:10]] = (r.headers["x-router-task"], r.headers["x-router-model"])
        finally:
            proc.terminate()
            proc.wait(10)
    assert routed == {"list the t": ("sql", "sql-model"), "translate ": ("translation", "translator"),
                      "any idea w": ("chat", "chat-model")}
