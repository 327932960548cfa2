"""Make a patch active inside OpenRLHF's Ray actors, not only in the driver that parsed the flags.

OpenRLHF's PPO driver parses the command line, then every model and the experience maker run in Ray actor
processes, which import OpenRLHF afresh: a monkeypatch made in the driver never reaches them (measured on
Ray 2.55). But the parsed args travel to every actor: the driver builds ``strategy = get_strategy(args)`` and
passes it to each actor's constructor, so Ray pickles ``strategy.args`` into each of them.

Mechanism: `carry_to_workers(target, payload)` wraps ``openrlhf.utils.config.hierarchize`` (the host function
every CLI calls right after parsing) so that the args it returns hold one `WorkerSetup` (attribute
``openrlhf_fair_worker_setup``). Unpickling a WorkerSetup, in whatever process that happens, calls each
registered ``"module:function"(payload)`` there. That works with ``ray job submit`` (the entrypoint runs
the CLI), with an already running Ray and on every node of a multi-node cluster (the add-on must be
installed there, like OpenRLHF), and it needs no ``runtime_env`` hook. The functions run once per
unpickling, so they must be idempotent (`patching.patch_attribute` is) and cheap; `when_imported` lets
them defer a patch until the process itself imports the host module, so e.g. a vLLM engine process does
not import the trainer stack because of us.

Generic on purpose: any add-on part (the CPU backend too) can carry its own setup this way.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
from typing import Any, Callable

from openrlhf_fair.host.patching import patch_attribute, require_attribute

ARGS_ATTR = "openrlhf_fair_worker_setup"
PATCH_ID = "openrlhf_fair.ray_workers.hierarchize"

# Setups the driver has registered, in registration order: target -> payload.
_registered: dict[str, Any] = {}
_undo_hierarchize: Callable[[], None] | None = None


def resolve(target: str) -> Callable[[Any], Any]:
    """The function named ``"package.module:function"``, failing loudly when it is not there."""
    module_name, sep, function_name = target.partition(":")
    if not sep or not module_name or not function_name:
        raise ValueError(f"openrlhf-fair: worker setup target must look like 'package.module:function', got {target!r}")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise ValueError(f"openrlhf-fair: worker setup target {target!r} is not a function")
    return function


class WorkerSetup:
    """Setup steps carried inside OpenRLHF's args; unpickling runs them in the receiving process."""

    def __init__(self, entries=()) -> None:
        self.entries: tuple[tuple[str, Any], ...] = tuple((str(t), p) for t, p in entries)
        for target, _ in self.entries:
            if ":" not in target:
                raise ValueError(f"openrlhf-fair: worker setup target must look like 'package.module:function', got {target!r}")

    def run(self) -> None:
        for target, payload in self.entries:
            resolve(target)(payload)

    def __reduce__(self):
        return (_restore, (self.entries,))

    def __repr__(self) -> str:  # shows up in OpenRLHF's args printout and wandb config
        return f"WorkerSetup({', '.join(target for target, _ in self.entries)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, WorkerSetup) and self.entries == other.entries


def _restore(entries) -> WorkerSetup:
    """Unpickling hook: rebuild the WorkerSetup and run it in this process."""
    setup = WorkerSetup(entries)
    setup.run()
    return setup


def attach(args: Any) -> Any:
    """Put the current WorkerSetup into ``args`` (a hierarchized namespace); returns args."""
    setattr(args, ARGS_ATTR, WorkerSetup(_registered.items()))
    return args


def _wrap_hierarchize(original):
    def hierarchize(*args, **kwargs):
        result = original(*args, **kwargs)
        return attach(result) if _registered else result

    hierarchize.__doc__ = original.__doc__
    return hierarchize


def carry_to_workers(target: str, payload: Any) -> Callable[[], None]:
    """Run ``target(payload)`` in every process that receives OpenRLHF's args; return the undo function.

    Registering the same target again replaces its payload. The first registration wraps
    ``openrlhf.utils.config.hierarchize``; the last undo restores it.
    """
    global _undo_hierarchize
    WorkerSetup([(target, payload)])  # validates the target's form now, in the driver
    _registered[target] = payload
    if _undo_hierarchize is None:
        config = importlib.import_module("openrlhf.utils.config")
        require_attribute(config, "hierarchize", "the args every OpenRLHF CLI builds; it carries the worker setup")
        _undo_hierarchize = patch_attribute(config, "hierarchize", _wrap_hierarchize, PATCH_ID)

    def undo() -> None:
        global _undo_hierarchize
        if _registered.get(target) is payload:
            del _registered[target]
        if not _registered and _undo_hierarchize is not None:
            _undo_hierarchize()
            _undo_hierarchize = None

    return undo


def registered() -> dict[str, Any]:
    """A copy of the setups the next hierarchized args will carry."""
    return dict(_registered)


# ----------------------------------------------------------------------------------------------- lazy patches
class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a named module finishes importing (a post-import hook)."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._busy = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader, self, fullname)
        return spec

    def fire(self, name: str, module) -> None:
        for callback in self.callbacks.pop(name, []):
            callback(module)


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, finder: _PostImportFinder, name: str) -> None:
        self.loader, self.finder, self.name = loader, finder, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = self.loader  # the module keeps its real loader (resources, reload)
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.finder.fire(self.name, module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


_finder: _PostImportFinder | None = None


def when_imported(module_name: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(module)`` now if ``module_name`` is imported, else right after this process imports it."""
    global _finder
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    if _finder is None:
        _finder = _PostImportFinder()
        sys.meta_path.insert(0, _finder)
    _finder.callbacks.setdefault(module_name, []).append(callback)
