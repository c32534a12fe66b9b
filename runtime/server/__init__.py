"""OpenAI-compatible HTTP server over the frontend: completions, chat, models, health, metrics."""

from infire.server.app import build_app
from infire.server.config import ServerConfig
from infire.server.run import build_server, serve

__all__ = ["ServerConfig", "build_app", "build_server", "serve"]
