"""Resolve `module:function` handlers from the directories of SLUICE_HANDLER_PATH (D7).

The same rules apply in the web process (deploy checks, without running any code), in
Celery and in the SDK command (which import and call the function).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HANDLER_FORMAT = "module:function"


class HandlerNotFound(LookupError):
    """The handler spec is malformed, or no listed directory defines it."""


def handler_dirs(path_setting: str, root: Path) -> list[Path]:
    """The colon-separated directories, relative ones taken from the project root."""
    dirs = []
    for entry in path_setting.split(os.pathsep):
        if entry.strip():
            path = Path(entry.strip())
            dirs.append(path if path.is_absolute() else root / path)
    return dirs


def _split(spec: str) -> tuple[str, str]:
    module, sep, function = spec.partition(":")
    parts = module.split(".")
    if not sep or not function.isidentifier() or not all(p.isidentifier() for p in parts):
        raise HandlerNotFound(f"handler {spec!r} is not of the form {HANDLER_FORMAT}")
    return module, function


def find_handler_file(spec: str, dirs: list[Path]) -> tuple[Path, str]:
    """The source file that should define `spec`, and the function's name."""
    module, function = _split(spec)
    relative = Path(*module.split("."))
    for directory in dirs:
        for candidate in (directory / f"{relative}.py", directory / relative / "__init__.py"):
            if candidate.is_file():
                return candidate, function
    searched = ", ".join(str(d) for d in dirs) or "(none)"
    raise HandlerNotFound(f"module {module!r} of handler {spec!r} is not in {searched}")


def check_handler(spec: str, dirs: list[Path]) -> None:
    """Raise HandlerNotFound unless the module defines the function at top level (no import)."""
    path, function = find_handler_file(spec, dirs)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise HandlerNotFound(f"{path.name} has a syntax error on line {exc.lineno}") from exc
    defined = {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    } | {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    if function not in defined:
        raise HandlerNotFound(f"{path.name} defines no function {function!r}")


def load_handler(spec: str, dirs: list[Path]) -> Callable[..., Any]:
    """Import the module from its file and return the function."""
    path, function = find_handler_file(spec, dirs)
    # Handlers may import their siblings (`from orders import clean_orders`), as scripts do.
    for directory in dirs:
        if str(directory) not in sys.path:
            sys.path.append(str(directory))
    module_name = f"sluice_handlers.{spec.partition(':')[0]}"
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != str(path):
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise HandlerNotFound(f"cannot load {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        loader_spec.loader.exec_module(module)
    handler = getattr(module, function, None)
    if not callable(handler):
        raise HandlerNotFound(f"{path.name} defines no function {function!r}")
    return handler  # type: ignore[no-any-return]
