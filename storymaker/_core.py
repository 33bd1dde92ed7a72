"""`storymaker_core`, the copy beside this package: how every module of `storymaker` imports the model.

Installed (`pip install .`) or run with the repository root on `sys.path`, `storymaker` and `storymaker_core`
are two top-level packages. Inside ComfyUI the pack's folder is itself a package (ComfyUI imports
`custom_nodes/ComfyUI-StoryMaker/__init__.py` by its path) and both are its subpackages; the consistency node
imports the evaluation code from there (`nodes/consistency.py`: `..storymaker.evaluate`). That code must then use
the pack's `storymaker_core`, the one the nodes' objects come from: an absolute `import storymaker_core` would
fail there, or find another copy whose classes are not the nodes', and a relative `..storymaker_core` fails when
`storymaker` is top-level. So a module of `storymaker` writes

    from .._core import faces     # storymaker_core.faces (<pack>.storymaker_core.faces inside ComfyUI)

and the module is imported when first asked for, as a plain import would (the story runner's command line does
not load PyTorch).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_PACK = __name__.rpartition(".")[0].rpartition(".")[0]  # "" when `storymaker` is a top-level package
PACKAGE = f"{_PACK}.storymaker_core" if _PACK else "storymaker_core"


def __getattr__(name: str) -> ModuleType:
    """`from ._core import NAME`: the module `storymaker_core.NAME` of the copy beside this package."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        module = importlib.import_module(f"{PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{PACKAGE}.{name}":
            raise AttributeError(f"storymaker_core has no module {name!r}") from None
        raise
    globals()[name] = module
    return module
