"""Start a server: load the engine and tokenizer, then run uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import uvicorn

from infire.errors import ConfigError
from infire.frontend import Frontend
from infire.server.app import build_app
from infire.server.config import ServerConfig
from infire.server.metrics import ServerMetrics
from infire.tokenizer import Tokenizer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from infire.engine import EngineConfig

logger = logging.getLogger(__name__)


def serve(config: ServerConfig, engine_config: "EngineConfig") -> None:
    """Serve until a signal; returns normally after a clean shutdown."""
    check_port_free(config.host, config.port)
    logger.info("loading %s (%s weights, device %s)", engine_config.model, engine_config.weights, engine_config.device)
    frontend, app = build_server(config, engine_config)
    server = _Server(frontend, uvicorn_config(app, config))
    with _signals_end_cleanly():
        server.run()
    frontend.shutdown()


def build_server(config: ServerConfig, engine_config: "EngineConfig") -> tuple[Frontend, "FastAPI"]:
    """Load the engine and the tokenizer of the model dir; returns a started frontend and its app."""
    from infire.engine import LLMEngine

    tokenizer = Tokenizer.from_dir(engine_config.model)
    engine = LLMEngine(engine_config)
    metrics = ServerMetrics(config.model_name)
    frontend = Frontend(engine, tokenizer, metrics).start()
    return frontend, build_app(frontend, config.model_name, metrics)


def uvicorn_config(app: "FastAPI", config: ServerConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=config.graceful_shutdown_s,
        access_log=config.log_level == "debug",
    )


def check_port_free(host: str, port: int) -> None:
    """Fail before loading the model, not after, if the address is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            hint = "pick another --port or stop the process using it" if exc.errno == errno.EADDRINUSE else "check --host"
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from exc


class _Server(uvicorn.Server):
    """uvicorn, plus: a shutdown signal aborts running requests so open streams end at once."""

    def __init__(self, frontend: Frontend, config: uvicorn.Config):
        super().__init__(config)
        self._frontend = frontend

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        self._frontend.abort_all()


@contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it; make that a no-op so the process exits 0."""
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
