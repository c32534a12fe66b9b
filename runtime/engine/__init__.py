"""The infire engine: sequences, paged KV cache, scheduler, model runner and LLMEngine.

Public names are imported lazily, so that `infire.model` can import the
attention op from `infire.engine.attention` without a cycle.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LLMEngine": "infire.engine.llm_engine",
    "EngineConfig": "infire.engine.config",
    "SamplingParams": "infire.engine.sampling_params",
    "RequestOutput": "infire.engine.outputs",
    "EngineStats": "infire.engine.outputs",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'infire.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
