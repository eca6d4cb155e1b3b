"""Conversations classified as a whole (issue 12 part 3): how the last user turn, the system prompt,
earlier turns, the assistant's code, tool calls and results and the tools offered become texts, and
how each is weighted (docs/classifier.md, "Conversations")."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from router.classify.classifier import (
    CONTEXT_PREFIX,
    DEFAULT_CONVERSATION,
    PART_BUDGET,
    PARTS,
    Classifier,
    ConversationWeights,
    classify,
    conversation_parts,
    extract_features,
)
from router.classify.features import split_conversation

TASKS_DIR = Path(__file__).resolve().parent.parent / "data" / "tasks"
EVERY_PART = ConversationWeights(combined=1.0, system=1.0, history=1.0, assistant=1.0, actions=1.0, tools=1.0)


def call(name: str, arguments: dict, id_: str = "c1") -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def tool(name: str, description: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description}}


HOTEL_TOOLS = [tool("search_hotels", "Find hotels in a city for given dates and guests"),
               tool("book_hotel", "Reserve a room by offer id")]


def hotel_agent(result: str, last: str = "the first one please. is breakfast included?") -> list[dict]:
    return [
        {"role": "system", "content": "You are the booking assistant of a hotel comparison site."},
        {"role": "user", "content": "a hotel in Porto for 2 nights from 14 June, 2 adults, under 110 a night"},
        call("search_hotels", {"city": "Porto", "checkin": "2025-06-14", "nights": 2, "max_price": 110}),
        {"role": "tool", "tool_call_id": "c1", "content": result},
        {"role": "assistant", "content": "Two fit: Casa 1 at 96 a night (8.7) or Hotel Rio at 104 (8.9)."},
        {"role": "user", "content": last},
    ]


# --- how a conversation is read ----------------------------------------------------------------------


def test_each_role_becomes_its_own_part() -> None:
    messages = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "run the tests"},
        {"role": "assistant", "content": "Running `pytest -q` now; the answer is 42 tests.", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "run_shell", "arguments": '{"cmd": "pytest -q"}'}}]},
        {"role": "tool", "tool_call_id": "1", "content": '{"failed": 1, "passed": 41}'},
        {"role": "user", "content": "fix the failing one"},
    ]
    offered = [tool("run_shell", "Run a shell command")]
    main, parts = conversation_parts(messages, offered, EVERY_PART)
    assert main == "fix the failing one"
    context, system, history, assistant, actions, tools = parts
    assert PARTS == ("context", "system", "history", "assistant", "actions", "tools")
    # the whole context as one text, as before the parts existed
    assert (main, context) == split_conversation(messages, offered)
    assert system == "You are a coding agent." and history == "run the tests"
    # the assistant part is the code in its answers, not their prose (the 42 is not there)
    assert assistant == "`pytest -q`"
    # tool calls and results: names as words, arguments and values kept, no JSON punctuation
    assert "run shell" in actions and "pytest -q" in actions and "failed" in actions and "41" in actions
    assert not set('{}[]":') & set(actions) and "run_shell" not in actions
    assert tools == "run shell - Run a shell command"


def test_parts_weighted_zero_are_not_read() -> None:
    messages = hotel_agent('[{"offer": "H-1", "price": 96}]')
    _, parts = conversation_parts(messages, HOTEL_TOOLS)
    for name, weight, text in zip(PARTS, DEFAULT_CONVERSATION.parts(), parts, strict=True):
        assert (text is None) == (weight == 0), name
    _, parts = conversation_parts(messages, HOTEL_TOOLS, ConversationWeights(tools=0.0, combined=0.0))
    assert parts[PARTS.index("tools")] is None and parts[PARTS.index("context")] is None


def test_most_recent_first_and_every_part_bounded() -> None:
    turns = []
    for i in range(60):
        turns += [{"role": "user", "content": f"question {i} " + "word " * 150},
                  {"role": "assistant", "content": "```\n" + "x = 1\n" * 200 + "```"},
                  {"role": "tool", "content": "result " * 300}]
    messages = [{"role": "system", "content": "be helpful " * 500}, *turns, {"role": "user", "content": "and?"}]
    main, parts = conversation_parts(messages, [tool(f"t{i}", "d " * 150) for i in range(50)], EVERY_PART)
    assert main == "and?"
    for text in parts[1:]:
        assert text is not None and len(text) <= PART_BUDGET + 20
    assert len(parts[0]) < 2500
    assert parts[2].startswith("question 59")  # the latest earlier turn first
    assert parts[1].startswith("be helpful")   # the system prompt from its start


@pytest.mark.parametrize("own", [False, True])
def test_features_are_what_the_model_scores(own: bool) -> None:
    # Training reads a conversation through extract_features, serving through Classifier.logits: the
    # dot product of the one with a model's weights is the other, on both scoring paths. With `own`,
    # the context's features count under their own names too (CONTEXT_PREFIX), stems and concepts
    # included, and a word the ask never uses can have a weight in the context alone.
    weights = {"hotel": [0.0, 0.4, -0.2], "porto": [0.1, 0.0, 0.3], "breakfast": [0.0, 0.5, 0.0],
               "run": [0.7, 0.0, 0.0], "__tool": [0.2, 0.1, 0.0], "c:,": [0.0, 0.0, 0.3], "the first": [0.0, 0.2, 0.1]}
    if own:
        weights |= {"ctx|hotel": [0.3, 0.0, 0.0], "ctx|run": [-0.5, 0.1, 0.0], "ctx|__tool": [0.0, 0.0, 0.4],
                    "ctx|compa~": [0.0, 0.2, 0.0], "ctx|offer": [0.0, 0.0, 0.6], "compa~": [0.1, 0.0, 0.0]}
    conversation = ConversationWeights(combined=0.5, system=1.5, history=0.75, assistant=0.5, actions=0.25, tools=2.0,
                                       own=own)
    messages = hotel_agent('[{"offer": "H-1", "run": 96}]')
    vector = extract_features(messages, HOTEL_TOOLS, conversation)
    assert any(name.startswith(CONTEXT_PREFIX) for name in vector) == own
    expected = [sum(vector.get(name, 0.0) * (w[k] - w[0]) for name, w in weights.items()) + b for k, b in
                ((1, 0.1), (2, -0.1))]
    for native in (False, True):
        model = Classifier(("a", "b", "c"), (0.0, 0.1, -0.1), weights, 1.0, conversation, native=native)
        z = model.logits(messages, HOTEL_TOOLS)
        assert z[0] == 0.0
        assert z[1:] == pytest.approx(expected, abs=1e-9)


def test_the_weights_travel_with_the_model_file() -> None:
    w = ConversationWeights(context=0.2, system=2.0, actions=0.25)
    assert ConversationWeights.from_json(w.to_json()) == w
    # a file written before the parts existed read the whole context alone, and still does
    old = ConversationWeights.from_json({"context": 0.3, "follow_up": 0.6, "short_turn": 32, "norm": 0.5, "switch": 0.0})
    assert (old.context, old.follow_up) == (0.3, 0.6) and old.parts() == (1.0, 0, 0, 0, 0, 0)


# --- what it decides -----------------------------------------------------------------------------------


def test_the_system_prompt_and_the_tools_count_on_their_own() -> None:
    # A booking agent whose tool returned numbers: read once more on their own, its system prompt
    # and its tools pull towards what kind of agent it is, whatever the tool returned.
    offers = '[{"offer": "H-88", "name": "Casa 1", "price_night": 96.0, "rating": 8.7, "km": 0.4}]'
    model = Classifier.load()
    roles = DEFAULT_CONVERSATION
    assert roles.system > 0 and roles.tools > 0
    model.conversation = ConversationWeights(roles.context, roles.follow_up, roles.short_turn, roles.norm,
                                             roles.switch, combined=roles.combined, system=0.0, history=0.0,
                                             assistant=0.0, actions=0.0, tools=0.0)
    alone = model.probabilities(hotel_agent(offers), HOTEL_TOOLS)
    model.conversation = roles
    assert model.probabilities(hotel_agent(offers), HOTEL_TOOLS)["general"] > alone["general"]
    assert model.classify(hotel_agent(offers), HOTEL_TOOLS).task == "general"


def test_the_system_prompt_and_the_tools_set_the_task_of_a_terse_turn() -> None:
    devtools = [tool("read_file", "Read a file from the repository"), tool("apply_patch", "Apply a diff to the repo")]
    coding = [{"role": "system", "content": "You are a coding agent in the user's repository."},
              {"role": "user", "content": "make the code match what the README says"},
              call("read_file", {"path": "README.md"}),
              {"role": "tool", "tool_call_id": "c1", "content": "The cache keeps 500 entries for 10 minutes."},
              {"role": "user", "content": "yes go ahead"}]
    assert classify(coding, devtools).task == "coding"
    tutor = [{"role": "system", "content": "You are a maths tutor. Explain every step of the solution."},
             {"role": "user", "content": "I don't get question 3"}]
    assert classify(tutor).task == "reasoning"


def test_a_follow_up_inherits_the_earlier_request_not_the_answers_numbers() -> None:
    model = Classifier.load()
    model.conversation = DEFAULT_CONVERSATION  # (a model file of before the parts reads the context alone)
    coded = [{"role": "user", "content": "sum of an array in JavaScript?"},
             {"role": "assistant", "content": "`arr.reduce((a, b) => a + b, 0)`"},
             {"role": "user", "content": "and the average?"}]
    assert model.classify(coded).task == "coding"
    prose = [{"role": "user", "content": "how many people live in Lisbon?"},
             {"role": "assistant", "content": "About 545,000 in the city and 2.9 million in the metro area (2021)."},
             {"role": "user", "content": "and the average?"}]
    assert model.classify(prose).task != "coding"


def test_native_and_python_agree_on_every_part(tmp_path: Path) -> None:
    fast, ref = Classifier.load(native=None), Classifier.load(native=False)
    if not fast.native:
        pytest.fail("router.classify._features is not built")
    fast.conversation = ref.conversation = EVERY_PART  # read every part, tool results too
    rows = []
    for path in sorted(TASKS_DIR.glob("extra_conversations*.jsonl")) + [TASKS_DIR / "extra_agents.jsonl"]:
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) > 400
    rng = random.Random(5)
    pool = "abc xyz `code` ```\nfn()\n``` {\"k\": [1, 2]} 中文 한국어 İ ß \ud800 \n\t 12.5 € ()=>;"
    for _ in range(300):
        texts = ["".join(rng.choice(pool) for _ in range(rng.choice([0, 5, 80, 900]))) for _ in range(6)]
        rows.append({"messages": [{"role": "system", "content": texts[0]}, {"role": "user", "content": texts[1]},
                                  {"role": "assistant", "content": texts[2], "tool_calls": [
                                      {"function": {"name": texts[3][:20], "arguments": texts[3]}}]},
                                  {"role": "tool", "content": texts[4]}, {"role": "user", "content": texts[5]}],
                     "tools": [tool(texts[0][:10], texts[4])] if rng.random() < 0.5 else None})
    for row in rows:
        messages, tools = row["messages"], row.get("tools")
        assert fast._sums(messages, tools) == ref._sums(messages, tools)
        assert fast.logits(messages, tools) == ref.logits(messages, tools)
        assert all(math.isfinite(v) for v in ref.logits(messages, tools))


# --- the gate and topic switches (2026-12-04, fourth round) --------------------------------------------


def test_the_gate_rises_as_the_last_turn_gets_shorter() -> None:
    rule = DEFAULT_CONVERSATION
    assert rule.ramp
    gates = [rule.weight(n) for n in range(0, 2 * rule.short_turn)]
    assert gates[0] == rule.follow_up and gates[rule.short_turn:] == [rule.context] * rule.short_turn
    assert all(a > b for a, b in zip(gates[:rule.short_turn], gates[1:rule.short_turn + 1], strict=True))
    assert rule.weight(3, switch=True) == rule.switch == 0.0
    # a model file written before the ramp keeps its step
    old = ConversationWeights.from_json({"context": 0.25, "follow_up": 0.5, "short_turn": 32, "combined": 1.0})
    assert not old.ramp and old.weight(31) == 0.5 and old.weight(32) == 0.25
    assert ConversationWeights.from_json(rule.to_json()) == rule


def test_a_topic_switch_is_announced_at_the_start_of_a_clause() -> None:
    from router.classify.features import announces_new_topic
    for turn in ("ok anyway, write me a limerick about my cat", "Anyway: what's the capital of Peru?",
                 "thanks! on a different note, any tips for a job interview?", "por cierto, ¿qué hora es en Lima?",
                 "au fait, tu connais un bon film ?", "bu arada, bir şiir yazar mısın?", "trouwens, hoe laat is het?",
                 "ngomong-ngomong, resep nasi goreng?", "그나저나 오늘 저녁 뭐 먹지?", "说点别的，推荐本书吧",
                 "それはそうと、明日の天気は？"):
        assert announces_new_topic(turn), turn
    for turn in ("I tried it anyway and it still fails", "ちなみにGoだと？", "try something else", "and in Go?",
                 "still wrong, do it anyway"):
        assert not announces_new_topic(turn), turn


def test_a_bare_follow_up_takes_the_conversations_task() -> None:
    u = lambda text: {"role": "user", "content": text}  # noqa: E731
    a = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    go = [u("how do I read a JSON file in Python?"), a("`with open(p) as f: data = json.load(f)`"), u("and in Go?")]
    assert classify(go).task == "coding"
    maths = [u("A rectangle's perimeter is 30 cm and its length is twice its width. Find its area."),
             a("Let the width be w: then 2(w + 2w) = 30, so w = 5 and the length is 10."), u("why times 2?")]
    assert classify(maths).task == "reasoning"
    story = [{"role": "system", "content": "You co-write short stories with the user."},
             u("start a story about a fox who runs a bakery"),
             a("Every morning before the village woke, Fennel the fox lit the ovens of the little bakery."),
             u("continue")]
    assert classify(story).task == "general"
    agent = [{"role": "system", "content": "You are a coding agent working in the user's repository."},
             u("the nightly job fails, find out why"), call("run_shell", {"cmd": "make nightly"}),
             {"role": "tool", "tool_call_id": "c1", "content": "make: *** [nightly] Error 2\nImportError: cannot import name 'parse' from 'dates'"},
             a("`dates.parse` was renamed to `dates.parse_date` last week; the nightly script still imports the old name."),
             u("go on")]
    assert classify(agent, [tool("run_shell", "Run a shell command")]).task == "coding"


def test_the_ramp_lets_a_bare_follow_up_lean_on_its_conversation() -> None:
    # Under the previous step (0.5 below 32 features) these leaned on their own few words.
    u = lambda text: {"role": "user", "content": text}  # noqa: E731
    korean = [u("사과 5개에 3000원이면 8개는 얼마야?"), {"role": "assistant", "content": "1개에 600원이니까 8개는 4800원이에요."},
              u("왜 600원이야?")]
    tutor = [{"role": "system", "content": "You are a patient maths tutor for teenagers. Explain step by step."},
             u("stuck again")]
    model = Classifier.load()
    assert model.conversation.ramp
    ramped = [model.probabilities(c)["reasoning"] for c in (korean, tutor)]
    assert model.classify(korean).task == model.classify(tutor).task == "reasoning"
    model.conversation = ConversationWeights(follow_up=0.5, ramp=False)
    stepped = [model.probabilities(c)["reasoning"] for c in (korean, tutor)]
    assert all(r > s for r, s in zip(ramped, stepped, strict=True))
