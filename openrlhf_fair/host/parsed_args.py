"""The one owner of the host call each OpenRLHF CLI runs on its parsed args: hooks on those args.

Where that call is depends on the release family (`host.compat`): on nested releases (0.10.2+) every trainer CLI
runs ``args = hierarchize(parser.parse_args())`` (``openrlhf.utils.config.hierarchize``) before it builds anything,
and hooks see the nested args it returns; on flat releases (0.9.3 - 0.10.1) there is no hierarchize, and the first
call of every CLI's ``train(args)`` is ``get_strategy(args)`` (``openrlhf.utils.get_strategy``, bound by the CLI
module when it runs), so hooks see the flat Namespace there, before the strategy is built. Either is the place to
check flags (before any model loads), adjust them, or attach something that must travel with them into Ray actors
(the strategy carries the args to every actor). Hooks read and set host arguments through `compat.host_arg` /
`compat.set_host_arg`, which know both layouts. Several parts of the add-on need that place: the
CPU backend's flag checks (`cpu_backend.cli_args`, `cpu_backend.ray_support`) and the way into Ray workers
(`host.ray_workers`). They register a hook here instead of each wrapping the host function:

    undo = on_parsed_args("openrlhf_fair.cpu_backend.cli_args", check)   # check(args) -> None

Hooks run in registration order, right after the host's own ``hierarchize`` (nested) or right before the host's
``get_strategy`` (flat). The first registration patches that host function (`patching.patch_attribute`); the
last undo restores it.
Registering the same id again replaces its hook in place.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

from openrlhf_fair.host import compat
from openrlhf_fair.host.patching import patch_attribute, require_attribute

PATCH_ID = "openrlhf_fair.parsed_args"

_hooks: dict[str, Callable[[Any], None]] = {}
_undo_patch: Callable[[], None] | None = None


def _run_hooks(args: Any) -> None:
    for hook in list(_hooks.values()):
        hook(args)


def _wrap_hierarchize(original):  # nested family: hooks see the nested args hierarchize returns
    def hierarchize(*args, **kwargs):
        nested = original(*args, **kwargs)
        _run_hooks(nested)
        return nested

    hierarchize.__doc__ = original.__doc__
    return hierarchize


def _wrap_get_strategy(original):  # flat family: hooks see the flat args before the strategy holds them
    @functools.wraps(original)
    def get_strategy(args, *rest, **kwargs):
        _run_hooks(args)
        return original(args, *rest, **kwargs)

    return get_strategy


_WRAPPERS = {"hierarchize": (_wrap_hierarchize, "builds the nested args every OpenRLHF CLI runs on"),
             "get_strategy": (_wrap_get_strategy, "the first call of every flat-args OpenRLHF CLI's train(args)")}


def on_parsed_args(hook_id: str, hook: Callable[[Any], None]) -> Callable[[], None]:
    """Run ``hook(args)`` on the args each OpenRLHF CLI parses in this process; return the undo function."""
    global _undo_patch
    if _undo_patch is None:
        module_name, function = compat.require_family().parsed_args_hook
        wrap, what = _WRAPPERS[function]
        module = importlib.import_module(module_name)
        require_attribute(module, function, what)
        _undo_patch = patch_attribute(module, function, wrap, PATCH_ID)
    _hooks[hook_id] = hook

    def undo() -> None:
        global _undo_patch
        if _hooks.get(hook_id) is hook:
            del _hooks[hook_id]
        if not _hooks and _undo_patch is not None:
            _undo_patch()
            _undo_patch = None

    return undo
