"""infire: an LLM inference engine serving plain or packed (unweight) checkpoints.

Subpackages: `infire.model` (Llama-family models and weight loading),
`infire.engine` (scheduler, paged KV cache, model runner, LLMEngine),
`infire.server` (OpenAI-compatible HTTP API).
"""

__version__ = "0.1.0"
