"""Claude through the ``anthropic`` SDK (Messages API).

The SDK's own retries are off (``max_retries``, default 0): the router decides what
to do after a failure, and an operator waiting on ``coordctl`` should hear about an
overloaded API in seconds, not after the SDK's back-off. The SDK is imported on
first use so a daemon that never asks Claude never pays for the import.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from coordd.ai.base import Completion, Message, ProviderError, kind_of_status

NAME = "claude"
MAX_TOKENS = 4096


class ClaudeProvider:
    name = NAME

    def __init__(
        self, api_key: str, model: str, base_url: str, timeout: float, max_retries: int = 0
    ) -> None:
        self.api_key = api_key
        self.model = model
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self._client: Any = None

    def _sdk(self) -> Any:
        if not self.api_key:
            raise ProviderError(NAME, "not_configured", "no API key (set ANTHROPIC_API_KEY)")
        if self._client is None:
            import anthropic

            self._client = anthropic.AsyncAnthropic(
                api_key=self.api_key,
                base_url=self.base_url or None,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _call(self, coro_fn: Any) -> Any:
        """Run one SDK call under a total deadline, mapping every SDK failure."""
        import anthropic

        try:
            async with asyncio.timeout(self.timeout):
                return await coro_fn()
        except (TimeoutError, anthropic.APITimeoutError):
            raise ProviderError(NAME, "timeout", f"no answer within {self.timeout:g}s") from None
        except anthropic.APIConnectionError as e:
            raise ProviderError(NAME, "down", f"{self.base_url or 'api'}: {e}") from None
        except anthropic.APIStatusError as e:
            raise ProviderError(NAME, kind_of_status(e.status_code), _error_text(e)) from None
        except anthropic.APIError as e:  # e.g. a body the SDK cannot parse
            raise ProviderError(NAME, "bad_response", str(e)) from None

    async def complete(
        self, messages: list[Message], model: str, schema: dict[str, Any] | None
    ) -> Completion:
        client = self._sdk()
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        started = time.monotonic()
        kwargs: dict[str, Any] = {"model": model, "max_tokens": MAX_TOKENS, "messages": turns}
        if system:
            kwargs["system"] = system
        msg = await self._call(lambda: client.messages.create(**kwargs))
        text = "".join(
            getattr(block, "text", "") for block in (msg.content or []) if block.type == "text"
        )
        if not text:
            raise ProviderError(NAME, "bad_response", "no text block in the reply")
        return Completion(
            text=text,
            provider=NAME,
            model=str(getattr(msg, "model", model) or model),
            elapsed=time.monotonic() - started,
        )

    async def probe(self) -> dict[str, Any]:
        """Configured, and does the API answer? (lists models: costs no tokens)."""
        try:
            client = self._sdk()
            page = await self._call(lambda: client.models.list(limit=20))
            return {"reachable": True, "models": [m.id for m in page.data]}
        except ProviderError as e:
            return {"reachable": False, "error": e.kind, "detail": e.detail}


def _error_text(e: Any) -> str:
    """``{"type":"error","error":{"type":"overloaded_error","message":...}}`` -> one line."""
    body = getattr(e, "body", None)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return f"HTTP {e.status_code} {err.get('type', '')}: {err.get('message', '')}"
    return f"HTTP {e.status_code}: {e}"
