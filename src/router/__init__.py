"""router: send every LLM request to the right model on the right provider, and meter every token.

>>> import router
>>> resp = router.complete(messages=[{"role": "user", "content": "Write a Rust function that parses ISO dates"}])  # doctest: +SKIP
>>> print(resp.choices[0].message.content, resp.router.model, resp.router.cost_usd)                          # doctest: +SKIP

`import router` stays light: the HTTP stack, the policy parser and the classifier load on first
use. The module-level functions use a default `Router` built from the policy at `ROUTER_POLICY`,
else the policy bundled with the package.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Decision",
    "Embeddings",
    "InvalidRequest",
    "MemoryMeter",
    "Meter",
    "NoCandidate",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Policy",
    "PolicyError",
    "RequestError",
    "Router",
    "RouterError",
    "RouterInfo",
    "UpstreamFailed",
    "__version__",
    "aclose",
    "acomplete",
    "complete",
    "default_router",
    "explain",
    "load_policy",
]

# Where each public name lives; imported on first access (PEP 562) so `import router` is cheap.
_LAZY = {
    "Router": "engine.client", "default_policy_path": "engine.client",
    "ChatCompletion": "core.response", "ChatCompletionChunk": "core.response", "Embeddings": "core.response",
    "RouterInfo": "core.response",
    "Decision": "core.decision",
    "Policy": "core.policy", "load_policy": "core.policy_parser",
    "Meter": "core.meter", "MemoryMeter": "core.meter",
    **{name: "core.errors" for name in (
        "AuthenticationError", "BudgetExceeded", "InvalidRequest", "NoCandidate", "NotFound", "PayloadTooLarge",
        "PermissionDenied", "PolicyError", "RequestError", "RouterError", "UpstreamFailed")},
}

if TYPE_CHECKING:
    from router.core.decision import Decision
    from router.core.errors import (
        AuthenticationError,
        BudgetExceeded,
        InvalidRequest,
        NoCandidate,
        NotFound,
        PayloadTooLarge,
        PermissionDenied,
        PolicyError,
        RequestError,
        RouterError,
        UpstreamFailed,
    )
    from router.core.meter import MemoryMeter, Meter
    from router.core.policy import Policy
    from router.core.policy_parser import load_policy
    from router.core.response import ChatCompletion, ChatCompletionChunk, Embeddings, RouterInfo
    from router.engine.client import Router


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


_default: Router | None = None
_default_lock = threading.Lock()


def default_router() -> Router:
    """The process-wide router the module-level functions use, built on first call."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                from router.engine.client import Router

                _default = Router()
    return _default


def complete(messages: Any = None, **kwargs: Any) -> Any:
    """Route and send a chat completion with the default router. See `Router.complete`."""
    return default_router().complete(messages, **kwargs)


async def acomplete(messages: Any = None, **kwargs: Any) -> Any:
    """Async `complete`. See `Router.acomplete`."""
    return await default_router().acomplete(messages, **kwargs)


def explain(messages: Any = None, **kwargs: Any) -> Any:
    """The routing decision for a request, without sending it. See `Router.explain`."""
    return default_router().explain(messages, **kwargs)


async def aclose() -> None:
    """Close the default router's connection pool on the running loop (call before your loop ends)."""
    if _default is not None:
        await _default.aclose()
