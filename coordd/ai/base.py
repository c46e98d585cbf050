"""What every AI provider shares: the reply it gives and the ways it can fail.

A provider turns a conversation into text. It never raises anything but
``ProviderError``, whose ``kind`` is one stable word the router uses to decide
whether another provider should be tried and that the result reports as the reason.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

# Failures after which ``auto`` tries the next provider: the provider could not give
# an answer at all. ``bad_request``/``auth`` are our mistakes or the operator's and
# are reported, but the next provider may still work, so they fall back too.
KINDS = (
    "not_configured",  # no API key, no host
    "down",  # connection refused, DNS, reset
    "timeout",  # connect, read or total deadline passed
    "model_missing",  # 404: model not pulled / unknown model
    "rate_limited",  # 429
    "overloaded",  # 529, 503
    "server_error",  # other 5xx
    "auth",  # 401, 403
    "bad_request",  # other 4xx
    "bad_response",  # the HTTP body is not what the API promises
)


class ProviderError(Exception):
    """A provider gave no usable reply. ``kind`` is one of ``KINDS``."""

    def __init__(self, provider: str, kind: str, detail: str) -> None:
        super().__init__(f"{provider}: {kind}: {detail}")
        self.provider = provider
        self.kind = kind
        self.detail = detail


class Completion(msgspec.Struct, kw_only=True):
    """The text a provider answered, and who answered it."""

    text: str
    provider: str
    model: str
    elapsed: float = 0.0


Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}


class Provider(Protocol):
    name: str

    async def complete(
        self, messages: list[Message], model: str, schema: dict[str, Any] | None
    ) -> Completion: ...

    async def probe(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def kind_of_status(status: int) -> str:
    """The failure kind of an HTTP status (both APIs use the same codes)."""
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "model_missing"
    if status == 429:
        return "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "server_error"
    return "bad_request"
