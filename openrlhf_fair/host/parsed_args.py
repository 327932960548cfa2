"""The one owner of ``openrlhf.utils.config.hierarchize``: hooks on the args every OpenRLHF CLI builds.

Every OpenRLHF trainer CLI runs ``args = hierarchize(parser.parse_args())`` before it builds anything, so the
nested args it returns are the place to check flags (before any model loads), adjust them, or attach
something that must travel with them into Ray actors. Several parts of the add-on need that place: the
CPU backend's flag checks (`cpu_backend.cli_args`, `cpu_backend.ray_support`) and the way into Ray workers
(`host.ray_workers`). They register a hook here instead of each wrapping the host function:

    undo = on_parsed_args("openrlhf_fair.cpu_backend.cli_args", check)   # check(args) -> None

Hooks run in registration order on the nested args, right after the host's own ``hierarchize``. The
first registration patches ``hierarchize`` (`patching.patch_attribute`); the last undo restores it.
Registering the same id again replaces its hook in place.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from openrlhf_fair.host.patching import patch_attribute, require_attribute

HOST_MODULE = "openrlhf.utils.config"
PATCH_ID = "openrlhf_fair.parsed_args.hierarchize"

_hooks: dict[str, Callable[[Any], None]] = {}
_undo_patch: Callable[[], None] | None = None


def _wrap_hierarchize(original):
    def hierarchize(*args, **kwargs):
        nested = original(*args, **kwargs)
        for hook in list(_hooks.values()):
            hook(nested)
        return nested

    hierarchize.__doc__ = original.__doc__
    return hierarchize


def on_parsed_args(hook_id: str, hook: Callable[[Any], None]) -> Callable[[], None]:
    """Run ``hook(args)`` on the nested args each OpenRLHF CLI builds in this process; return the undo function."""
    global _undo_patch
    if _undo_patch is None:
        config = importlib.import_module(HOST_MODULE)
        require_attribute(config, "hierarchize", "builds the nested args every OpenRLHF CLI runs on")
        _undo_patch = patch_attribute(config, "hierarchize", _wrap_hierarchize, PATCH_ID)
    _hooks[hook_id] = hook

    def undo() -> None:
        global _undo_patch
        if _hooks.get(hook_id) is hook:
            del _hooks[hook_id]
        if not _hooks and _undo_patch is not None:
            _undo_patch()
            _undo_patch = None

    return undo


def registered() -> list[str]:
    """The ids of the hooks the next parsed args go through, in order."""
    return list(_hooks)
