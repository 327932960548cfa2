"""The add-on's one import hook: run code right after a module is imported; serve a package where none is installed.

- `when_imported(name, callback)`: ``callback(module)`` at once if this process has imported ``name``, else
  right after it does. Patches inside Ray workers wait for the host module this way, so a process that never
  imports it (Ray's own workers, a vLLM engine) imports nothing because of the add-on.
- `serve_if_missing(name, folder)`: ``import name`` loads ``folder/name`` when no installed package provides
  it (every other finder is asked first, so a real package always wins). The CPU backend's import-only
  stand-ins for flash_attn and vllm are served this way.

Both go through one finder (`ImportHooks`), put at the front of ``sys.meta_path`` on first use. It looks only
at the names registered with it; for those it asks the other finders for the real module and, when there
are callbacks, wraps its loader so they run once the module has executed. Registering is cheap: no import.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any, Callable


class ImportHooks(importlib.abc.MetaPathFinder):
    """Post-import callbacks and fallback packages, by module name."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self.fallbacks: dict[str, Path] = {}
        self._busy = threading.local()  # names this thread is looking up through the other finders

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks and fullname not in self.fallbacks:
            return None
        busy = self._busy.__dict__.setdefault("names", set())
        if fullname in busy:
            return None
        busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders: an installed module wins
        finally:
            busy.discard(fullname)
        if spec is None and fullname in self.fallbacks:
            spec = importlib.machinery.PathFinder.find_spec(fullname, [str(self.fallbacks[fullname])])
        if spec is not None and fullname in self.callbacks and spec.loader is not None \
                and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenCall(spec.loader, self, fullname)
        return spec

    def fire(self, name: str, module) -> None:
        for callback in self.callbacks.pop(name, []):
            callback(module)

    def __repr__(self) -> str:
        return f"openrlhf_fair.ImportHooks(after={sorted(self.callbacks)}, fallbacks={sorted(self.fallbacks)})"


class _ThenCall(importlib.abc.Loader):
    """The real loader, then the module's post-import callbacks."""

    def __init__(self, loader, hooks: ImportHooks, name: str) -> None:
        self.loader, self.hooks, self.name = loader, hooks, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = self.loader  # the module keeps its real loader (resources, reload)
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.hooks.fire(self.name, module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def hooks() -> ImportHooks:
    """This process's finder, installed at the front of ``sys.meta_path`` on first use."""
    found = next((f for f in sys.meta_path if isinstance(f, ImportHooks)), None)
    if found is None:
        found = ImportHooks()
        sys.meta_path.insert(0, found)
    return found


def when_imported(module_name: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(module)`` now if ``module_name`` is imported, else right after this process imports it."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    hooks().callbacks.setdefault(module_name, []).append(callback)


def serve_if_missing(name: str, folder: Path) -> None:
    """Let ``import name`` load the package ``folder/name`` when no installed package provides it."""
    hooks().fallbacks[name] = Path(folder)


def stop_serving(name: str) -> None:
    """Undo `serve_if_missing` (modules already imported from the folder stay in ``sys.modules``)."""
    found = next((f for f in sys.meta_path if isinstance(f, ImportHooks)), None)
    if found is not None:
        found.fallbacks.pop(name, None)


def serves(name: str) -> bool:
    found = next((f for f in sys.meta_path if isinstance(f, ImportHooks)), None)
    return found is not None and name in found.fallbacks
