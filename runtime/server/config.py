"""Server configuration: where to listen and what name to serve the model under."""

from __future__ import annotations

from dataclasses import dataclass

from infire.errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class ServerConfig:
    """Listening address and API-facing names; the engine has its own EngineConfig."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    log_level: str = "info"
    # Seconds open streams get to finish after SIGINT/SIGTERM (they are aborted at once).
    graceful_shutdown_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port} is not a TCP port; use 1..65535 (0 picks a free one)")
        if not self.host:
            raise ConfigError("host is empty; use e.g. 127.0.0.1 (this machine) or 0.0.0.0 (all interfaces)")
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ConfigError("served_model_name is empty; leave it unset to serve the model under its path")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level={self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.graceful_shutdown_s < 0:
            raise ConfigError(f"graceful_shutdown_s={self.graceful_shutdown_s} must be >= 0")

    @property
    def model_name(self) -> str:
        """The name clients put in "model": served_model_name, else the model path as given."""
        return self.served_model_name or self.model
