"""Llama-family models for infire: config parsing, layers, the model and weight loading."""

from infire.model.config import ARCHITECTURES, ModelConfig

__all__ = ["ARCHITECTURES", "ModelConfig"]
