"""Session-wide pytest fixtures shared by the test packages."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face Llama checkpoint (bf16), built once and cached."""
    from unweight import demo

    return demo.smollm2_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 with its original fp32 weights (plus an int64 buffer)."""
    from unweight import demo

    return demo.minilm_dir("float32")


@pytest.fixture(scope="session")
def minilm_bf16_dir() -> Path:
    """all-MiniLM-L6-v2 with every float tensor cast to bf16."""
    from unweight import demo

    return demo.minilm_dir("bfloat16")
