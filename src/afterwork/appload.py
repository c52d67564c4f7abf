"""Finding the user's app from the command line's APP (``module:attribute``).

A mistake here is the first thing a new user meets, so every failure is one
line that says what is wrong: a module that is not there, an attribute that is
not an app, or the app's own code failing as it is imported, with the error
and the line of the user's code that led to it.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import sysconfig
import traceback

import click

from .app import Afterwork
from .errors import AfterworkError


def load_app(path: str) -> Afterwork:
    """Import ``module:attribute``; the working directory is importable, as for uvicorn."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise click.UsageError(f"APP must look like 'myapp.jobs:jobs', not {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise click.ClickException(
                f"cannot import module {module_name!r} (from APP {path!r}); "
                "run the command from your project's directory"
            ) from None
        raise click.ClickException(_import_failure(path, exc)) from None
    except Exception as exc:  # the app's own code failed while importing: say where
        raise click.ClickException(_import_failure(path, exc)) from None
    try:
        app = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise click.ClickException(
            f"module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not isinstance(app, Afterwork):
        raise click.ClickException(f"{path} is a {type(app).__name__}, not an Afterwork app")
    return app


def _import_failure(path: str, exc: Exception) -> str:
    """One line for an app whose import raised: the error, and the line of the user's
    code that led to it (not importlib's or afterwork's frames)."""
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    what = message if isinstance(exc, AfterworkError) else f"{type(exc).__name__}: {message}"
    where = _user_location(exc)
    return f"cannot load {path}: {what}" + (f" ({where})" if where else "")


def _user_location(exc: BaseException) -> str | None:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_shown_path(exc.filename)}, line {exc.lineno}"
    # Frames of importlib, afterwork, the standard library and installed packages are
    # not where the user's mistake is.
    skipped = ("<", os.path.dirname(__file__) + os.sep, *_library_folders())
    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.startswith(skipped):
            continue
        found = f"{_shown_path(filename)}, line {line}"
    return found


def _library_folders() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple(os.path.join(paths[n], "") for n in names if n in paths)


def _shown_path(filename: str) -> str:
    relative = os.path.relpath(filename)
    return filename if relative.startswith("..") else relative
