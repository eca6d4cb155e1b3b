"""Model prices from litellm's bundled catalogue, read offline without importing litellm.

litellm ships ``model_prices_and_context_window_backup.json`` inside its package. Importing
litellm takes seconds, so this module finds the file through the import system's metadata
(no import) and parses it once, on the first lookup, only when a policy leaves a price out.
Besides input and output, an entry carries the cache-read, cache-write and reasoning prices when
the catalogue has them, and its source names litellm's version, so a bill can be reproduced.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

__all__ = ["CatalogueEntry", "catalogue_lookup", "catalogue_path", "catalogue_version"]

# How a provider kind is spelled as a key prefix in the catalogue.
_PREFIX = {"openai": "", "deepseek": "deepseek/", "mistral": "mistral/", "litellm": "", "vllm": None}


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    key: str
    input_per_mtok: float
    output_per_mtok: float
    context_window: int | None
    cached_input_per_mtok: float | None = None   # cache_read_input_token_cost
    cache_write_per_mtok: float | None = None    # cache_creation_input_token_cost (a zero reads as absent)
    reasoning_per_mtok: float | None = None      # output_cost_per_reasoning_token
    max_output_tokens: int | None = None         # max_output_tokens: the most one answer may generate

    @property
    def source(self) -> str:
        """Where this price came from, reproducibly: ``catalogue:<key> (litellm <version>)``."""
        return f"catalogue:{self.key} (litellm {catalogue_version()})"


@cache
def catalogue_version() -> str:
    """The installed litellm's version (whose bundled catalogue prices come from), read from its
    package metadata without importing it; ``unknown`` when it cannot be read."""
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _per_mtok(value: Any) -> float | None:
    return round(value * 1e6, 9) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _positive_int(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def catalogue_path() -> str | None:
    """Path of litellm's bundled price file, or None when litellm is not installed."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = os.path.join(base, "model_prices_and_context_window_backup.json")
        if os.path.exists(path):
            return path
    return None


@cache
def _catalogue() -> dict[str, Any]:
    path = catalogue_path()
    if path is None:
        return {}
    with open(path, "rb") as f:
        return orjson.loads(f.read())


def catalogue_lookup(kind: str, model: str) -> CatalogueEntry | None:
    """Price and context window of `model` as served by a provider of `kind`, or None.

    >>> catalogue_lookup("deepseek", "deepseek-chat").input_per_mtok  # doctest: +SKIP
    0.28
    """
    prefix = _PREFIX.get(kind, "")
    if prefix is None:  # self-hosted: the catalogue cannot know what your GPUs cost
        return None
    data = _catalogue()
    keys = [prefix + model, model]
    if kind == "litellm" and "/" in model:  # litellm names carry their provider: "anthropic/claude-..."
        keys.append(model.split("/", 1)[1])
    for key in dict.fromkeys(keys):
        entry = data.get(key)
        if not isinstance(entry, dict):
            continue
        inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if not isinstance(inp, (int, float)) or not isinstance(out, (int, float)):
            continue
        ctx = entry.get("max_input_tokens") or entry.get("max_tokens")
        write = _per_mtok(entry.get("cache_creation_input_token_cost"))
        return CatalogueEntry(key, round(inp * 1e6, 9), round(out * 1e6, 9), int(ctx) if ctx else None,
                              _per_mtok(entry.get("cache_read_input_token_cost")), write or None,
                              _per_mtok(entry.get("output_cost_per_reasoning_token")), _positive_int(entry.get("max_output_tokens")))
    return None
