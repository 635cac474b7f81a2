"""The Typer app every command module registers on, and the one-line error path."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from tunelab.errors import TunelabError

app = typer.Typer(
    name="tunelab",
    help="Fine-tune, measure and deploy Hugging Face models on your own data; compare ways to reduce hallucination.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def fail(error: TunelabError) -> NoReturn:
    """One line on stderr (what is wrong — how to fix it), exit code 2, no traceback.

    The message is escaped: brackets in it (`pip install 'tunelab[openvino]'`, a file's [section]) are text, not markup.
    """
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    sys.exit(error.exit_code)


def user_errors(func: F) -> F:
    """Turn TunelabError raised inside a command into the one-line error (also under CliRunner)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TunelabError as error:
            fail(error)

    return wrapper  # type: ignore[return-value]


def command(*args, **kwargs) -> Callable[[F], F]:
    """app.command with the one-line error handling applied."""

    def decorate(func: F) -> F:
        return app.command(*args, **kwargs)(user_errors(func))

    return decorate
