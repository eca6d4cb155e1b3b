"""The exceptions `router` raises, drawn as the tree they form::

    RouterError
    ├── PolicyError                 an invalid policy file; carries every PolicyIssue found
    └── RequestError                a request that cannot be served; carries an HTTP status
        ├── InvalidRequest          400: bad fields, or an upstream rejected the request as invalid
        ├── AuthenticationError     401: no or unknown API key (proxy)
        ├── PermissionDenied        403: the tenant may not do this
        ├── NotFound                404: unknown model alias or route
        ├── PayloadTooLarge         413: body over the configured limit (proxy)
        ├── BudgetExceeded          429: the tenant's budget cannot pay for any candidate
        ├── BudgetUnavailable       503: the budget store cannot be reached (policy: fail_closed)
        ├── RateLimited             429: a requests, tokens or in-flight limit is reached; carries
        │                           retry-after and OpenAI's x-ratelimit-* headers
        ├── RateLimitUnavailable    503: the rate-limit store cannot be reached (policy: fail_closed)
        ├── NoCandidate             every candidate was excluded: 503 when one may recover (circuit
        │                           open, saturated), 403 when residency forbids them all, else 400
        └── UpstreamFailed          502/503/504: every candidate that was tried failed

Messages never contain secrets: API keys are held in `Secret` objects and URLs are
printed without credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "BudgetUnavailable",
    "InvalidRequest",
    "NoCandidate",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PolicyError",
    "PolicyIssue",
    "RateLimitUnavailable",
    "RateLimited",
    "RequestError",
    "RouterError",
    "UpstreamFailed",
    "redact",
    "redact_cut",
]

_SECRETISH = re.compile(
    r"(?i)\b(?:sk|pk|rk|api[-_]?key|key)[-_][A-Za-z0-9_\-*.]{6,}"   # sk-..., sk-proj-..., key_...
    r"|(?i:bearer)\s+[^\s\"']+"                                     # Authorization values
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"                              # user:password@ in URLs
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secret values, and anything shaped like a key or URL credentials, masked.

    Upstream error messages can quote the key they rejected ("Incorrect API key provided: sk-...");
    everything `router` reports from an upstream passes through here first.

    >>> redact("Incorrect API key provided: sk-proj-abc123XYZ", ["sk-proj-abc123XYZ"])
    'Incorrect API key provided: [redacted]'
    """
    # key shapes first: masking an exact secret first could cut a longer key-shaped token that
    # contains it ("sk-ds" inside "sk-ds-other") and leave the rest of it unmatched
    text = _SECRETISH.sub("[redacted]", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def redact_cut(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """`text` redacted, *then* cut to `limit` characters: a key that straddles the cut can never
    leak in part, because it is masked while it is still whole.

    >>> redact_cut("Incorrect API key provided: sk-proj-abc123XYZ", 40)
    'Incorrect API key provided: [redacted]'
    """
    return redact(text, secrets)[:limit]


class RouterError(Exception):
    """Base of every error `router` raises on purpose."""


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file: where it is and what to do about it."""

    file: str
    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


class PolicyError(RouterError):
    """A policy that failed to load or validate. `issues` lists every problem found."""

    def __init__(self, issues: Sequence[PolicyIssue]):
        self.issues = list(issues)
        n = len(self.issues)
        head = f"invalid policy ({n} problem{'s' if n != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  {i}" for i in self.issues)]))


class RequestError(RouterError):
    """A request that cannot be served, shaped to become an OpenAI error object. `router` is the
    failed request's `RouterInfo` (task, route, attempts) when the engine got as far as opening it."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None
    router: Any = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(RequestError):
    status = 400
    code = "invalid_request"


class AuthenticationError(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(RequestError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(RequestError):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class BudgetExceeded(RequestError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class BudgetUnavailable(RequestError):
    """The budget store (e.g. Redis) did not answer in time and the policy fails closed."""

    status = 503
    type = "service_unavailable"
    code = "budget_unavailable"


class RateLimited(RequestError):
    """A rate limit is reached. `kind`: requests, tokens or concurrent; `headers`: what the response
    carries (``retry-after``, ``x-ratelimit-*``, ``x-should-retry``), so SDKs wait and retry."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str] | None = None, tenant: str = ""):
        super().__init__(message)
        self.kind, self.tenant = kind, tenant
        self.type = "tokens" if kind == "tokens" else "requests"   # what OpenAI's API reports
        self.headers = headers or {}


class RateLimitUnavailable(RequestError):
    """The rate-limit store (e.g. Redis) did not answer in time and the policy fails closed."""

    status = 503
    type = "service_unavailable"
    code = "rate_limit_unavailable"


class NoCandidate(RequestError):
    """Every candidate of the route was excluded; `decision` says why for each."""

    status = 503
    type = "service_unavailable"
    code = "no_candidate"

    def __init__(self, message: str, *, decision: Any = None, **kw: Any):
        super().__init__(message, **kw)
        self.decision = decision
        if self.status == 403:
            self.type = "permission_error"
        elif self.status == 400:
            self.type = "invalid_request_error"


class UpstreamFailed(RequestError):
    """Every candidate that was tried failed; `attempts` lists each try and its outcome."""

    status = 502
    type = "upstream_error"
    code = "upstream_failed"

    def __init__(self, message: str, *, attempts: Sequence[Any] = (), status: int = 502):
        super().__init__(message, status=status)
        self.attempts = list(attempts)
