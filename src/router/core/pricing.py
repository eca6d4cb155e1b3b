"""What a request costs: prices per token kind, time-of-day windows, and where a price came from.

A `Price` (in `router.core.policy`) has USD per million tokens for uncached input and output, and,
optionally, for input read from the provider's prompt cache (`cached_input_per_mtok`), input
written to it (`cache_write_per_mtok`, which Anthropic charges) and reasoning tokens billed apart
from output (`reasoning_per_mtok`). A kind without its own price is billed at the input (cache
read, cache write) or output (reasoning) price, which is what providers without that discount
charge. `windows` are optional time-of-day prices (UTC), such as DeepSeek's off-peak discount.

Usage counts are the normalised ones `router.core.translate.read_usage` returns: `prompt_tokens`
includes the cached and cache-write tokens, `completion_tokens` includes the reasoning tokens.

>>> from router.core.policy import Price
>>> from router.core.translate import Usage
>>> deepseek = Price(0.28, 0.42, cached_input_per_mtok=0.028)
>>> f"{usage_cost(deepseek, Usage(1000, 100, cached_tokens=800)):.7f}"   # 200 x 0.28 + 800 x 0.028 + 100 x 0.42
'0.0001204'
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from router.core.policy import Price, PriceWindow

if TYPE_CHECKING:
    from router.core.translate import Usage

__all__ = ["describe_price", "minute_of_day", "price_at", "price_source", "usage_cost"]


def minute_of_day(when: float) -> int:
    """Minutes after midnight UTC of the Unix time `when`.

    >>> minute_of_day(16 * 3600 + 30 * 60)
    990
    """
    return int(when % 86400) // 60


def _window(price: Price, when: float) -> PriceWindow | None:
    minute = minute_of_day(when)
    for w in price.windows:
        if w.contains(minute):
            return w
    return None


def price_at(price: Price, when: float | None) -> Price:
    """The price in force at Unix time `when` (UTC): a window's, else the base price.

    >>> from router.core.policy import Price, PriceWindow
    >>> base = Price(0.28, 0.42, windows=(PriceWindow(990, 30, Price(0.14, 0.21)),))
    >>> price_at(base, 17 * 3600).input_per_mtok, price_at(base, 12 * 3600).input_per_mtok
    (0.14, 0.28)
    """
    if not price.windows or when is None:
        return price
    window = _window(price, when)
    return window.price if window is not None else price


def price_source(price: Price, when: float | None) -> str:
    """Where the price billed at `when` came from: ``policy`` or ``catalogue:<key> (litellm <version>)``,
    with the time-of-day window when one applied (``policy [16:30-00:30 UTC]``)."""
    if price.windows and when is not None:
        window = _window(price, when)
        if window is not None:
            return f"{price.source} [{window.label} UTC]"
    return price.source


def usage_cost(price: Price, usage: Usage, when: float | None = None) -> float:
    """USD for `usage` at `price` (the window in force at Unix time `when`, if any); never negative.

    Counts an upstream got wrong are clamped: cached and cache-write tokens to the prompt, reasoning
    tokens to the completion.
    """
    if price.windows and when is not None:
        price = price_at(price, when)
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    cached, written, reasoning = usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens
    if not (cached or written or (reasoning and price.reasoning_per_mtok is not None)):
        return max(0.0, (prompt * price.input_per_mtok + completion * price.output_per_mtok) / 1e6)
    cached = min(max(cached, 0), prompt)
    written = min(max(written, 0), prompt - cached)
    reasoning = min(max(reasoning, 0), completion)
    inp = price.input_per_mtok
    read = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else inp
    write = price.cache_write_per_mtok if price.cache_write_per_mtok is not None else inp
    out = price.output_per_mtok
    think = price.reasoning_per_mtok if price.reasoning_per_mtok is not None else out
    usd = ((prompt - cached - written) * inp + cached * read + written * write
           + (completion - reasoning) * out + reasoning * think) / 1e6
    return max(0.0, usd)


def _rates(price: Price) -> dict[str, Any]:
    out: dict[str, Any] = {"input_per_mtok": price.input_per_mtok}
    if price.cached_input_per_mtok is not None:
        out["cached_input_per_mtok"] = price.cached_input_per_mtok
    if price.cache_write_per_mtok is not None:
        out["cache_write_per_mtok"] = price.cache_write_per_mtok
    out["output_per_mtok"] = price.output_per_mtok
    if price.reasoning_per_mtok is not None:
        out["reasoning_per_mtok"] = price.reasoning_per_mtok
    return out


def describe_price(price: Price, when: float | None = None) -> dict[str, Any]:
    """A price as `router explain` shows it: its rates, its windows, its source, and (with `when`)
    the rates in force at that time.

    >>> describe_price(Price(0.28, 0.42, cached_input_per_mtok=0.028))
    {'input_per_mtok': 0.28, 'cached_input_per_mtok': 0.028, 'output_per_mtok': 0.42, 'source': 'policy'}
    """
    out = _rates(price)
    if price.windows:
        out["windows"] = [{"utc": w.label, **_rates(w.price)} for w in price.windows]
    out["source"] = price.source
    if price.windows and when is not None:
        out["now"] = {"utc": time.strftime("%H:%M", time.gmtime(when)), **_rates(price_at(price, when)),
                      "source": price_source(price, when)}
    return out
