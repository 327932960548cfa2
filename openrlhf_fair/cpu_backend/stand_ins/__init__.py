"""Import-only stand-ins for CUDA-only packages OpenRLHF imports at module top (flash_attn; vllm for PPO).

`install("flash_attn")` serves the package from this folder through the add-on's one import hook
(`host.import_hooks.serve_if_missing`): every other finder is asked first, so an installed package always
wins; `install` also refuses when the real package is importable, so a stand-in never shadows a real one.
Stand-ins let modules import; their functions raise `StandInCalled` naming what the CPU backend does not support.

transformers 5.3 - 5.7 (OpenRLHF 0.9.x - 0.10.x) look a findable package up in the package -> distributions map
it builds at import (``PACKAGE_DISTRIBUTION_MAPPING["flash_attn"]``, a KeyError for a package no distribution
provides; 5.15 uses ``.get``). While a stand-in serves, that map names it under `STAND_IN_DISTRIBUTION` (a
distribution that does not exist, so transformers finds no version and no ``flash-attn``: not available).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

from openrlhf_fair.host import import_hooks

HERE = Path(__file__).resolve().parent
TRANSFORMERS_IMPORT_UTILS = "transformers.utils.import_utils"
STAND_IN_DISTRIBUTION = "openrlhf-fair-import-only-stand-in"


class StandInCalled(RuntimeError):
    """Code called into a stand-in package: the feature needs the real package (and CUDA)."""


def unsupported(module: str, name: str, feature: str) -> Callable[..., None]:
    """A function that raises a clear error when called; ``feature`` says what needs the real package."""
    package = module.split(".")[0]

    def stand_in(*args, **kwargs):
        raise StandInCalled(
            f"{module}.{name} was called, but this {package} is the openrlhf-fair CPU backend's import-only "
            f"stand-in: {feature} need the real {package} on a CUDA machine."
        )

    stand_in.__name__ = stand_in.__qualname__ = name
    stand_in.__module__ = module
    return stand_in


def is_stand_in(module) -> bool:
    return Path(getattr(module, "__file__", "") or "").resolve().is_relative_to(HERE)


def install(name: str) -> bool:
    """Serve ``name`` from its stand-in unless the real package is importable; True when the stand-in serves it."""
    if not (HERE / name / "__init__.py").is_file():
        raise ValueError(f"openrlhf-fair has no stand-in for {name!r}")
    if import_hooks.serves(name):
        return True
    if importlib.util.find_spec(name) is not None:  # the real package: never shadow it
        return False
    import_hooks.serve_if_missing(name, HERE)
    import_hooks.when_imported(TRANSFORMERS_IMPORT_UTILS, lambda module: _map_distribution(module, name))
    return True


def _map_distribution(import_utils, name: str) -> None:
    mapping = getattr(import_utils, "PACKAGE_DISTRIBUTION_MAPPING", None)
    if isinstance(mapping, dict) and import_hooks.serves(name):
        mapping.setdefault(name, [STAND_IN_DISTRIBUTION])


def uninstall(name: str) -> None:
    """Stop serving ``name`` (already imported stand-in modules are dropped from ``sys.modules``)."""
    if not import_hooks.serves(name):
        return
    import_hooks.stop_serving(name)
    mapping = getattr(sys.modules.get(TRANSFORMERS_IMPORT_UTILS), "PACKAGE_DISTRIBUTION_MAPPING", None)
    if isinstance(mapping, dict) and mapping.get(name) == [STAND_IN_DISTRIBUTION]:
        del mapping[name]
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        if is_stand_in(sys.modules[key]):
            del sys.modules[key]
