"""Ollama over its HTTP API (httpx): installed models and chat completions.

``GET /api/tags`` lists the installed models; ``POST /api/chat`` with
``stream: false`` answers in one JSON body whose ``message.content`` is the text.
``format`` is either ``"json"`` or a JSON schema (structured outputs, Ollama 0.5+);
an older Ollama refuses a schema with 400, so we ask again with ``"json"``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from coordd.ai.base import Completion, Message, ProviderError, kind_of_status

NAME = "ollama"


class OllamaProvider:
    name = NAME

    def __init__(self, host: str, timeout: float) -> None:
        self.host = host.rstrip("/")
        self.timeout = timeout
        # Connect fails fast (a stopped Ollama answers "refused" at once; a black-holed
        # host should not eat the whole budget); read gets the rest of ``timeout``.
        self.client = httpx.AsyncClient(
            base_url=self.host,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            # Proxies and certificates come from our configuration, not from whatever
            # HTTP_PROXY the daemon inherited (a proxy in front of a local Ollama breaks it).
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One HTTP call under a total deadline; every failure is a ProviderError."""
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self.client.request(method, path, json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderError(NAME, "timeout", f"no answer within {self.timeout:g}s") from None
        except httpx.TransportError as e:
            raise ProviderError(NAME, "down", f"{self.host}: {e or type(e).__name__}") from None
        if resp.status_code != 200:
            raise ProviderError(NAME, kind_of_status(resp.status_code), _error_text(resp))
        try:
            return resp.json()
        except ValueError:
            raise ProviderError(NAME, "bad_response", f"not JSON: {resp.text[:200]!r}") from None

    async def models(self) -> list[str]:
        """Names of the installed models (``GET /api/tags``)."""
        data = await self._request("GET", "/api/tags")
        try:
            return [m["name"] for m in data["models"]]
        except (KeyError, TypeError):
            raise ProviderError(NAME, "bad_response", "tags without models[].name") from None

    async def probe(self) -> dict[str, Any]:
        try:
            return {"reachable": True, "host": self.host, "models": await self.models()}
        except ProviderError as e:
            return {"reachable": False, "host": self.host, "error": e.kind, "detail": e.detail}

    async def complete(
        self, messages: list[Message], model: str, schema: dict[str, Any] | None
    ) -> Completion:
        started = time.monotonic()
        fmt: Any = schema if schema is not None else "json"
        try:
            data = await self._chat(messages, model, fmt)
        except ProviderError as e:
            if e.kind != "bad_request" or schema is None:
                raise
            data = await self._chat(messages, model, "json")
        try:
            text = data["message"]["content"]
        except (KeyError, TypeError):
            raise ProviderError(
                NAME, "bad_response", "chat reply without message.content"
            ) from None
        if not isinstance(text, str):
            raise ProviderError(NAME, "bad_response", "message.content is not text")
        return Completion(
            text=text,
            provider=NAME,
            model=str(data.get("model") or model),
            elapsed=time.monotonic() - started,
        )

    async def _chat(self, messages: list[Message], model: str, fmt: Any) -> Any:
        body = {
            "model": model,
            "messages": messages,
            "stream": False,
            "format": fmt,
            "options": {"temperature": 0},
        }
        return await self._request("POST", "/api/chat", body)


def _error_text(resp: httpx.Response) -> str:
    """Ollama's own message (``{"error": "model 'x' not found"}``) or the status."""
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        err = None
    return f"HTTP {resp.status_code}: {err or resp.text[:200] or resp.reason_phrase}"
