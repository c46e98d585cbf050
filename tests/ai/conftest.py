from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ai.standins import Anthropic, Ollama


@pytest.fixture
def ollama() -> Iterator[Ollama]:
    s = Ollama()
    yield s
    s.close()


@pytest.fixture
def claude_api() -> Iterator[Anthropic]:
    s = Anthropic()
    yield s
    s.close()
