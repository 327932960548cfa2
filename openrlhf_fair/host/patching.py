"""Explicit, undoable, idempotent attribute patches that stay correct when several stack on one attribute.

`patch_attribute(owner, name, make_replacement, patch_id)` replaces ``owner.name`` with
``make_replacement(current)`` and returns the function that undoes it. Each replacement carries three
markers: ``__openrlhf_fair_original__`` (the object it wrapped, itself possibly a patch),
``__openrlhf_fair_patch__`` (its patch id) and ``__openrlhf_fair_factory__`` (``make_replacement``).
Following the originals from ``owner.name`` gives the attribute's chain of patches, outermost first.

The contract, with patches A then B on one attribute (B outermost):
- applying A again is a no-op (its id is found anywhere along the chain), and so is its undo;
- undoing B (outermost) puts back exactly what was there before B, i.e. A;
- undoing A (not outermost) splices A out: B is rebuilt with its own factory on top of what A wrapped, so B
  stays active and A is gone;
- an undo whose patch is no longer reachable from ``owner.name`` although it was never undone (something that
  is not one of these patches replaced the attribute on top of it) raises `PatchStackError` instead of
  silently doing nothing; undoing twice is harmless.
An attribute that a class only inherited is deleted again from that class on undo, not copied into it.
"""

from __future__ import annotations

from typing import Any, Callable

from openrlhf_fair.errors import AddonError, HostMismatchError

ORIGINAL_ATTR = "__openrlhf_fair_original__"
PATCH_ID_ATTR = "__openrlhf_fair_patch__"
FACTORY_ATTR = "__openrlhf_fair_factory__"
_BEFORE_ATTR = "__openrlhf_fair_before__"  # the raw object (e.g. a staticmethod) to put back on undo
_ABSENT = object()  # marks an attribute the owner did not hold itself (inherited from a base class)


class PatchStackError(RuntimeError):
    """A patch cannot be undone because an object that is not an openrlhf-fair patch now sits on top of it."""


def _owner_name(owner: Any) -> str:
    return getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None) or repr(owner)


def require_attribute(owner: Any, name: str, what: str) -> Any:
    """Return ``owner.name`` or fail loudly, naming the host symbol that moved."""
    if not hasattr(owner, name):
        raise HostMismatchError(
            f"openrlhf-fair: {_owner_name(owner)}.{name} not found ({what}). The installed OpenRLHF differs from the "
            f"releases this add-on supports; see `openrlhf --version` and `openrlhf_fair.host.compat`."
        )
    return getattr(owner, name)


def patch_chain(owner: Any, name: str) -> list[Any]:
    """The patches on ``owner.name``, outermost first (stops at the first object that is not a patch)."""
    chain, current = [], getattr(owner, name, None)
    while getattr(current, PATCH_ID_ATTR, None) is not None:
        chain.append(current)
        current = getattr(current, ORIGINAL_ATTR, None)
    return chain


def is_patched(owner: Any, name: str, patch_id: str | None = None) -> bool:
    """Whether ``owner.name`` carries any patch, or the patch ``patch_id`` anywhere along its chain."""
    chain = patch_chain(owner, name)
    return bool(chain) if patch_id is None else any(getattr(p, PATCH_ID_ATTR) == patch_id for p in chain)


def original_of(obj: Any) -> Any:
    """The host object a patch (or a stack of patches) wrapped; the object itself when it is not a patch."""
    while hasattr(obj, ORIGINAL_ATTR):
        obj = getattr(obj, ORIGINAL_ATTR)
    return obj


def _raw(owner: Any, name: str) -> Any:
    """What ``owner`` itself holds under ``name`` (a staticmethod stays one); `_ABSENT` when it only inherits it."""
    namespace = getattr(owner, "__dict__", None)
    return getattr(owner, name) if namespace is None else namespace.get(name, _ABSENT)


def _put_back(owner: Any, name: str, raw: Any) -> None:
    if raw is _ABSENT:
        delattr(owner, name)
    else:
        setattr(owner, name, raw)


def _install(owner: Any, name: str, make_replacement: Callable[[Any], Any], patch_id: str) -> None:
    original = getattr(owner, name)
    raw = _raw(owner, name)
    replacement = make_replacement(original)
    setattr(replacement, ORIGINAL_ATTR, original)
    setattr(replacement, PATCH_ID_ATTR, patch_id)
    setattr(replacement, FACTORY_ATTR, make_replacement)
    setattr(replacement, _BEFORE_ATTR, raw)
    if isinstance(raw, (staticmethod, classmethod)):  # the class dict held a wrapper: keep the same kind
        replacement = type(raw)(replacement)
    setattr(owner, name, replacement)


def patch_attribute(
    owner: Any, name: str, make_replacement: Callable[[Any], Any], patch_id: str
) -> Callable[[], None]:
    """Replace ``owner.name`` by ``make_replacement(current)``; return the undo function (see the module doc).

    Applying a patch whose ``patch_id`` is already on the attribute's chain is a no-op (its undo is a no-op too).
    """
    require_attribute(owner, name, f"needed by patch {patch_id}")
    if is_patched(owner, name, patch_id):
        return lambda: None
    _install(owner, name, make_replacement, patch_id)
    undone = False

    def undo() -> None:
        nonlocal undone
        if undone:
            return
        _remove(owner, name, patch_id)
        undone = True

    return undo


def _remove(owner: Any, name: str, patch_id: str) -> None:
    chain = patch_chain(owner, name)
    ids = [getattr(p, PATCH_ID_ATTR) for p in chain]
    if patch_id not in ids:
        raise PatchStackError(
            f"openrlhf-fair: cannot undo patch {patch_id} on {_owner_name(owner)}.{name}: the attribute was replaced "
            f"by {getattr(owner, name, None)!r}, which is not an openrlhf-fair patch; undo that replacement first"
        )
    position = ids.index(patch_id)
    outer = chain[:position]  # outermost first; rebuilt on top of what the removed patch wrapped
    _put_back(owner, name, getattr(chain[position], _BEFORE_ATTR))
    for patch in reversed(outer):
        _install(owner, name, getattr(patch, FACTORY_ATTR), getattr(patch, PATCH_ID_ATTR))


def undo_all(undos: list[Callable[[], None]]) -> Callable[[], None]:
    """One undo for several patches: calls ``undos`` in reverse order (the list may still grow after this call)."""

    def undo() -> None:
        for undo_one in reversed(undos):
            undo_one()

    return undo
