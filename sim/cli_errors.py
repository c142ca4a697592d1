"""How every `yoda` command fails: one `error: ...` line on stderr, never a traceback for a foreseeable mistake.

- Bad flags, files or names (ValueError, KeyError, OSError from the commands): `error: <message>`, exit 2.
- A missing optional extra (torch for `yoda run`, ray for `--ray`): the `pip install` line that fixes it, exit 2.
- Anything else is a bug: one line naming the exception and the file the full traceback was written to,
  exit 1; `yoda --debug CMD` (or YODA_DEBUG=1) lets the traceback through instead.
"""
from __future__ import annotations

import importlib
import os
import tempfile
import time
import traceback
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

import typer
from typer.core import TyperCommand

# top-level module -> the extra of pyproject.toml that installs it
EXTRAS = {"torch": "cpu", "triton": "cpu", "transformers": "cpu", "safetensors": "cpu", "cuda": "gpu",
          "fastapi": "serve", "uvicorn": "serve", "httpx": "serve", "openai": "serve", "ray": "ray", "vidur": "bench"}
EXTRA_NOTES = {"cpu": " (or [gpu] on a CUDA machine)"}

# NOTE: typer >= 0.29 vendors click (typer._click): take its UsageError from a public typer exception
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_EXIT_TYPES = (typer.Exit, typer.Abort, _USAGE_ERROR, KeyboardInterrupt)


class CliError(ValueError):
    """A refusal whose message is fit for `error: <message>` (exit 2)."""


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def missing_extra_message(module: str, command: str) -> str | None:
    """The fix for a missing optional module, or None when `module` belongs to no extra."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (f"{command} needs {top}, which is not installed: pip install 'yoda-serve[{extra}]'"
            f"{EXTRA_NOTES.get(extra, '')}")


def require_extra(command: str, *modules: str) -> None:
    """Refuse (CliError) before any work when one of `modules` cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise CliError(missing_extra_message(module, command) or f"{command} needs {module}") from None


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors caused by the user's flags or files become one error line."""
    try:
        yield
    except KeyError as e:
        fail(str(e.args[0]) if e.args else str(e))
    except (ValueError, TypeError, OSError) as e:
        fail(str(e))


def debug_enabled(ctx: Any) -> bool:
    root = ctx.find_root() if ctx is not None else None
    return bool(os.environ.get("YODA_DEBUG")) or bool(getattr(root, "meta", {}).get("yoda_debug"))


def write_traceback(exc: BaseException) -> str:
    """The full traceback in a fresh file under the temp directory; returns its path."""
    fd, path = tempfile.mkstemp(prefix=f"yoda-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path


class OneLineErrors(TyperCommand):
    """Flag parsing errors, missing extras and unexpected errors also end as one `error: ...` line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["raw_args"] = list(args)  # for the command line recorded in results
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERROR as e:
            typer.echo(f"error: {e.format_message()}", err=True)
            raise typer.Exit(2) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _EXIT_TYPES:
            raise
        except CliError as e:
            fail(str(e))
        except ModuleNotFoundError as e:
            fix = missing_extra_message(e.name or "", f"yoda {ctx.info_name}")
            if fix is None or debug_enabled(ctx):
                self._unexpected(ctx, e)
            fail(fix)
        except Exception as e:  # noqa: BLE001 - the one place a bug meets the user
            self._unexpected(ctx, e)

    @staticmethod
    def _unexpected(ctx: Any, exc: Exception) -> NoReturn:
        if debug_enabled(ctx):
            raise exc
        path = write_traceback(exc)
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (a bug: full traceback in {path}; "
                   f"`yoda --debug {ctx.info_name} ...` shows it here)", err=True)
        raise typer.Exit(1)
