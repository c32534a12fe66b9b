"""Drives the engine for the server and the CLI: prompts in, text deltas out.

The engine is synchronous and single-threaded; the frontend owns it in one
background thread and talks to it through queues, adding what the engine leaves
out: incremental detokenization, stop strings, request ids and latency timing.
"""

from infire.frontend.core import Frontend, RequestStream, random_request_id
from infire.frontend.tracker import FrontendObserver, GenerationChunk, RequestMetrics

__all__ = ["Frontend", "FrontendObserver", "GenerationChunk", "RequestMetrics", "RequestStream", "random_request_id"]
