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
