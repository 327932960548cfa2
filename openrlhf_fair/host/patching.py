"""Explicit, undoable, idempotent attribute patches (the Liger-Kernel / pluggy contract).

`patch_attribute(owner, name, make_replacement)` replaces ``owner.name`` with
``make_replacement(original)`` and returns a function that undoes it. The replacement carries
``__openrlhf_fair_original__`` (the wrapped host object) and ``__openrlhf_fair_patch__`` (a patch id),
so applying the same patch twice is harmless: the second call sees the marker and returns a no-op undo.
"""

from __future__ import annotations

from typing import Any, Callable

ORIGINAL_ATTR = "__openrlhf_fair_original__"
PATCH_ID_ATTR = "__openrlhf_fair_patch__"


class HostMismatchError(RuntimeError):
    """The installed OpenRLHF does not have the structure this add-on was written against."""


def require_attribute(owner: Any, name: str, what: str) -> Any:
    """Return ``owner.name`` or fail loudly, naming the host symbol that moved."""
    if not hasattr(owner, name):
        owner_name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
        raise HostMismatchError(
            f"openrlhf-fair: {owner_name}.{name} not found ({what}). The installed OpenRLHF differs from the "
            f"versions this add-on supports; see `openrlhf_fair.host.version.SUPPORTED_OPENRLHF`."
        )
    return getattr(owner, name)


def is_patched(owner: Any, name: str, patch_id: str | None = None) -> bool:
    current = getattr(owner, name, None)
    marker = getattr(current, PATCH_ID_ATTR, None)
    return marker is not None and (patch_id is None or marker == patch_id)


def original_of(obj: Any) -> Any:
    """The host object a patch wrapped (the object itself when it is not a patch)."""
    while hasattr(obj, ORIGINAL_ATTR):
        obj = getattr(obj, ORIGINAL_ATTR)
    return obj


def patch_attribute(
    owner: Any, name: str, make_replacement: Callable[[Any], Any], patch_id: str
) -> Callable[[], None]:
    """Replace ``owner.name`` by ``make_replacement(original)``; return the undo function.

    Applying a patch with the same ``patch_id`` again is a no-op (its undo is a no-op too).
    """
    original = require_attribute(owner, name, f"needed by patch {patch_id}")
    if is_patched(owner, name, patch_id):
        return lambda: None
    # Look through staticmethod/classmethod wrappers in the class dict, so we wrap the function itself.
    raw = owner.__dict__.get(name, original) if isinstance(owner, type) else original
    replacement = make_replacement(original)
    setattr(replacement, ORIGINAL_ATTR, original)
    setattr(replacement, PATCH_ID_ATTR, patch_id)
    if isinstance(raw, (staticmethod, classmethod)):
        replacement = type(raw)(replacement)
    setattr(owner, name, replacement)

    def undo() -> None:
        if is_patched(owner, name, patch_id):
            setattr(owner, name, raw)

    return undo


def undo_all(undos: list[Callable[[], None]]) -> Callable[[], None]:
    """One undo for several patches: calls ``undos`` in reverse order (the list may still grow after this call)."""

    def undo() -> None:
        for undo_one in reversed(undos):
            undo_one()

    return undo
