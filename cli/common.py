"""Helpers shared by the CLI apps: known errors -> one red line and an exit code.

    @app.command()
    @handle_errors("INFIRE_DEBUG", {InfireError: 1, ConfigError: 2})
    def serve(...): ...

A known error prints `Error: <message> (set INFIRE_DEBUG=1 for a traceback)` on
stderr and exits with the code of its closest class in the map; with the debug
variable set, the traceback is shown instead. Unknown exceptions are bugs and
keep their traceback.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Mapping, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., object])

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl+C
TRUE_VALUES = ("1", "true", "yes", "on")

err_console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)


def debug_enabled(debug_env: str) -> bool:
    return os.environ.get(debug_env, "").strip().lower() in TRUE_VALUES


def exit_code_for(exc: BaseException, exit_codes: Mapping[type[BaseException], int]) -> int | None:
    """The code of the most specific class of `exc` in the map; None if it is not known."""
    for cls in type(exc).__mro__:
        if cls in exit_codes:
            return exit_codes[cls]
    return None


def print_error(message: str, debug_env: str) -> None:
    err_console.print(f"[bold red]Error:[/bold red] {escape(message)} [dim](set {debug_env}=1 for a traceback)[/dim]")


def handle_errors(debug_env: str, exit_codes: Mapping[type[BaseException], int]) -> Callable[[F], F]:
    """Decorate a command so known errors end it with one line instead of a traceback."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise  # typer's own ways of ending a command
            except KeyboardInterrupt:
                if debug_enabled(debug_env):
                    raise
                err_console.print("[yellow]Interrupted.[/yellow]")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except Exception as exc:
                code = exit_code_for(exc, exit_codes)
                if code is None or debug_enabled(debug_env):
                    raise
                print_error(str(exc) or type(exc).__name__, debug_env)
                raise typer.Exit(code) from None

        return wrapper  # type: ignore[return-value]

    return decorate
