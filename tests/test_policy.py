from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from router.core.errors import PolicyError
from router.core.policy import Secret, hash_key
from router.core.policy_parser import check_policy, load_policy, parse_policy
from router.core.prices import catalogue_version

from .conftest import EXAMPLE_ENV, ROOT

CONTRACT = ROOT.parent / "shared" / "contract" / "policy-example.yaml"

BASE = """
version: 1
providers:
  local: {kind: vllm, base_url: "http://127.0.0.1:9/v1", region: eu}
  api: {kind: openai, base_url: "https://api.example.com/v1", api_key: "k", region: us}
models:
  small: {provider: local, model: m1, price: {input_per_mtok: 1, output_per_mtok: 2}}
  big: {provider: api, model: gpt-4.1-mini}
routes:
  general: {targets: [small, big]}
rules:
  - {route: general}
residency:
  eu: [eu]
"""


def issues_of(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, source="p.yaml", env=env or {})
    return [(i.path, i.message) for i in ei.value.issues]


def test_contract_example_loads_as_is():
    path = CONTRACT if CONTRACT.exists() else ROOT / "policies" / "example.yaml"
    policy = load_policy(path, env=EXAMPLE_ENV)
    assert policy.routes["coding"].targets == ("qwen3-coder-next", "deepseek-v3", "gpt-4.1-mini")
    assert policy.models["qwen3-coder-next"].price.input_per_mtok == 0.03
    # deepseek-r1 has no price in the file: it comes from litellm's bundled catalogue
    r1 = policy.models["deepseek-r1"]
    assert r1.price.source.startswith("catalogue:") and r1.price.input_per_mtok > 0
    assert policy.tenant_for_key("sk-acme-eu-demo").name == "acme-eu"
    assert policy.tenant_for_key("sk-wrong") is None
    assert policy.providers["vllm-eu"].api_key is None  # ${VLLM_API_KEY:-none}


def test_repo_copy_of_contract_is_identical():
    if not CONTRACT.exists():
        pytest.skip("shared/ not beside the checkout")
    assert (ROOT / "policies" / "example.yaml").read_text() == CONTRACT.read_text()


@pytest.mark.parametrize("path", sorted([*(ROOT / "policies").glob("*.yaml"), *(ROOT / "simulate" / "policies").glob("*.yaml")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_policies_are_valid(path: pathlib.Path):
    assert check_policy(path, env=EXAMPLE_ENV) == []


@pytest.mark.parametrize("name", ["default.yaml", "demo.yaml"])
def test_bundled_policies_match_the_repo(name):
    bundled = ROOT / "src" / "router" / "policies" / name
    assert bundled.read_text() == (ROOT / "policies" / name).read_text()


def test_valid_base():
    policy = parse_policy(BASE, env={})
    # the catalogue's version is part of the source, so an upgrade of litellm never changes a bill silently
    assert policy.models["big"].price.source == f"catalogue:gpt-4.1-mini (litellm {catalogue_version()})"
    assert policy.models["big"].price.cached_input_per_mtok == 0.1   # cache_read_input_token_cost
    assert policy.digest


@pytest.mark.parametrize("edit,path,fragment", [
    (("routes:\n  general: {targets: [small, big]}", "routes:\n  general: {targets: [small, bgi]}"),
     "routes.general.targets[1]", "unknown model 'bgi'"),
    (("routes:\n  general: {targets: [small, big]}", "routes:\n  general: {targets: []}"),
     "routes.general.targets", "at least one target"),
    (("  small: {provider: local,", "  small: {provider: lcal,"), "models.small.provider", "unknown provider 'lcal'"),
    (("input_per_mtok: 1,", "input_per_mtok: -1,"), "models.small.price.input_per_mtok", "at least 0"),
    (("input_per_mtok: 1,", "input_per_mtok: cheap,"), "models.small.price.input_per_mtok", "expected a number"),
    (("kind: vllm", "kind: vlm"), "providers.local.kind", "'vlm' is not one of"),
    (("version: 1", "version: 1\nroutse: {}"), "routse", "unknown key 'routse'"),
    (("  - {route: general}", "  - {route: genral}"), "rules[0].route", "unknown route 'genral'"),
    (("  - {route: general}", "  - {if: {task: coding}, route: general}"), "rules", "no catch-all rule"),
    (("  - {route: general}", "  - {if: {tsk: coding}, route: general}\n  - {route: general}"),
     "rules[0].if.tsk", "unknown key 'tsk'"),
    (("  big: {provider: api, model: gpt-4.1-mini}", "  big: {provider: api, model: no-such-model-xyz}"),
     "models.big.price", "no price for 'no-such-model-xyz'"),
    (("base_url: \"http://127.0.0.1:9/v1\"", "base_url: \"ftp://x\""), "providers.local.base_url", "http"),
])
def test_each_error_names_its_path(edit, path, fragment):
    old, new = edit
    assert old in BASE
    found = issues_of(BASE.replace(old, new))
    assert any(p == path and fragment in m for p, m in found), found


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(PolicyError) as ei:
        parse_policy(BASE.replace("routes:\n  general: {targets", "routes:\n  general: {tragets"),
                     source="p.yaml", env={})
    issue = next(i for i in ei.value.issues if i.path == "routes.general.tragets")
    assert "did you mean 'targets'" in issue.fix
    assert str(issue).startswith("p.yaml: routes.general.tragets: unknown key 'tragets'")


def test_residency_no_route_can_satisfy():
    text = BASE.replace("  - {route: general}", "  - {if: {residency: us}, route: general}\n  - {route: general}")
    text = text.replace("residency:\n  eu: [eu]", "residency:\n  eu: [eu]\n  us: [mars]")
    found = issues_of(text)
    assert any(p == "residency.us" and "no provider" in m for p, m in found)
    assert any(p == "rules[0].route" and "residency 'us'" in m for p, m in found)


def test_all_problems_reported_at_once():
    text = BASE.replace("kind: vllm", "kind: vlm").replace("[small, big]", "[small, nope]")
    assert len(issues_of(text)) >= 2


def test_missing_env_var_names_it_and_never_a_value():
    text = BASE.replace('api_key: "k"', 'api_key: "${ROUTER_TEST_UNSET_KEY}"')
    found = issues_of(text, env={})
    assert ("providers.api.api_key", "environment variable ROUTER_TEST_UNSET_KEY is not set") in found
    policy = parse_policy(BASE.replace('api_key: "k"', 'api_key: "${K:-fallback}"'), env={})
    assert policy.providers["api"].api_key.reveal() == "fallback"


def test_secrets_never_print():
    policy = parse_policy(BASE.replace('api_key: "k"', 'api_key: "sk-very-secret"'), env={})
    key = policy.providers["api"].api_key
    assert isinstance(key, Secret) and key.reveal() == "sk-very-secret"
    for text in (repr(policy), str(policy.providers), repr(key), f"{key}"):
        assert "sk-very-secret" not in text


def test_yaml_syntax_error_has_line():
    with pytest.raises(PolicyError) as ei:
        parse_policy("providers: {a: [1,\n", source="bad.yaml", env={})
    assert ei.value.issues[0].path.startswith("line ")


def test_tenant_key_must_be_hashed():
    text = BASE + "tenants:\n  t1: {keys: ['plain-key']}\n"
    assert any(p == "tenants.t1.keys[0]" for p, _ in issues_of(text))
    assert hash_key("sk-acme-eu-demo").startswith("sha256:b3e0993d")


def test_router_check_cli_exit_codes(tmp_path: pathlib.Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("[small, big]", "[small, bgi]"))
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    run = lambda *a: subprocess.run([sys.executable, "-m", "router.cli", *a], capture_output=True, text=True)  # noqa: E731
    r = run("check", str(bad))
    assert r.returncode == 1
    assert f"{bad}: routes.general.targets[1]: unknown model 'bgi'" in r.stderr
    assert "did you mean 'big'" in r.stderr
    r = run("check", str(good))
    assert r.returncode == 0 and "ok" in r.stdout
