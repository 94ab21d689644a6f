"""Optional packages: import one, or say in one line what is wrong and what to install.

torchvision needs care: each of its wheels is built against one torch release, so a
torchvision beside another torch (PyPI's beside the CPU wheel, say) fails to import with
"operator torchvision::nms does not exist", and so does timm, which imports it. The error
then names both versions and the fix: a matching pair.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from distill.errors import MissingDependency, first_line

# a torch and torchvision pair whose wheels match, both on this project's build machine
MATCHING_PAIR = "pip install torch==2.14.1 torchvision==0.29.1"


def optional_import(module: str, needed_by: str, install: str | None = None) -> ModuleType:
    """``module``, imported; a ``MissingDependency`` naming what ``needed_by`` (a model
    spec, a recipe field) lacks and how to install it (``install``: the command, default
    ``pip install <module>``) when it is absent or does not load."""
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or a compiled extension that does not load
        raise MissingDependency(import_problem(module, needed_by, error, install)) from None


def import_problem(module: str, needed_by: str, error: Exception, install: str | None) -> str:
    """Why ``module`` did not import, and the fix, in one line."""
    missing = error.name if isinstance(error, ModuleNotFoundError) else None
    top = (missing or "").split(".")[0]
    if module == "torchvision" or top == "torchvision" or "torchvision" in str(error):
        return torchvision_problem(module, needed_by, error)
    if top == module:
        return f"{needed_by} needs the {module} package: {install or f'pip install {module}'}"
    if missing:
        return f"{needed_by} needs {module}, which cannot import {missing}: pip install {top}"
    return f"{needed_by} needs {module}, which is installed but does not load: {first_line(error)}"


def torchvision_problem(module: str, needed_by: str, error: Exception) -> str:
    """torchvision (``module``, or a package that imports it) is absent or does not load."""
    import torch

    via = "" if module == "torchvision" else f" (through {module})"
    try:
        version = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return (
            f"{needed_by} needs torchvision{via}, which is not installed; install the "
            f"torchvision release built for torch {torch.__version__} (for example "
            f"{MATCHING_PAIR}, a matching pair)"
        )
    requires = importlib.metadata.requires("torchvision") or []
    built_for = next((r for r in requires if r.split()[0].split("(")[0] == "torch"), "its torch")
    return (
        f"{needed_by} needs torchvision{via}, and torchvision {version} does not load beside "
        f"torch {torch.__version__} ({first_line(error)}); it is built for {built_for}: "
        f"install a matching pair (for example {MATCHING_PAIR})"
    )
