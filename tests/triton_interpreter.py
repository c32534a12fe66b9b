"""Import a module of Triton kernels so that they run in Triton's interpreter (on CPU tensors)."""

from __future__ import annotations

import importlib
import os

import pytest


def interpreted(module_name: str, kernel: str):
    """The module, with TRITON_INTERPRET=1 in effect when its kernels were defined.

    The variable is read when a @triton.jit function is created, so a module imported
    earlier without it is reloaded; the environment is restored afterwards so that other
    test modules see it as they left it.
    """
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        module = importlib.import_module(module_name)
        if type(getattr(module, kernel)).__name__ != "InterpretedFunction":
            module = importlib.reload(module)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return module
