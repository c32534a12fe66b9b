"""Run a typer app so that known errors become one red line and an exit code, never a traceback."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

EXIT_ERROR = 1
EXIT_DATA = 3          # corrupt data or a verification mismatch
EXIT_INTERRUPTED = 130


def _known_errors() -> tuple[type[BaseException], ...]:
    from unweight.errors import UnweightError

    errors: list[type[BaseException]] = [UnweightError]
    try:
        from infire.errors import InfireError
        errors.append(InfireError)
    except ImportError:
        pass
    return tuple(errors)


def exit_code(error: BaseException) -> int:
    from unweight.errors import CorruptDataError, VerificationError

    return EXIT_DATA if isinstance(error, (CorruptDataError, VerificationError)) else EXIT_ERROR


def run_app(app: typer.Typer, debug_env: str) -> None:
    """Call the app; map known errors to `error: ...` on stderr plus an exit code."""
    try:
        app(standalone_mode=True)
    except _known_errors() as e:
        if os.environ.get(debug_env):
            raise
        Console(stderr=True).print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        Console(stderr=True).print(f"[dim](set {debug_env}=1 for a traceback)[/]")
        sys.exit(exit_code(e))
    except KeyboardInterrupt:
        Console(stderr=True).print("[red]interrupted[/]")
        sys.exit(EXIT_INTERRUPTED)
