from __future__ import annotations

import os
import pathlib

import pytest

# Shared fixtures of the metering suites (`sims`: the simulated providers of their policy); a test
# module's own fixture of the same name wins over it.
pytest_plugins = ("tests.metering_support",)

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE_ENV = {"DEEPSEEK_API_KEY": "sk-ds-secret", "OPENAI_API_KEY": "sk-oa-secret", "MISTRAL_API_KEY": "sk-mi-secret"}


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    return dict(os.environ)


# -- the chaos suite's figures (tests/chaos): printed at the end, whatever the verbosity; here, in
# the root conftest, because under pytest-xdist only this one is loaded by the controller
_CHAOS_FIGURES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _CHAOS_FIGURES.extend(value for key, value in report.user_properties if key == "chaos_figure")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _CHAOS_FIGURES:
        long = os.environ.get("ROUTER_CHAOS", "").lower() == "long"
        terminalreporter.write_sep("=", f"chaos figures ({'long' if long else 'CI'} mode; ROUTER_CHAOS=long for more)")
        for line in _CHAOS_FIGURES:
            terminalreporter.write_line(line)
