"""The one seam between the add-on's features and OpenRLHF: hook points, native where the host has them.

Features (`host.pairwise_trainer` for train_rm / train_dpo, `host.experience_maker` for train_ppo_ray) only
register hooks; they never call into OpenRLHF's trainers otherwise. The hook points are those
`patches/openrlhf-<version>/extension-hooks.diff` adds to OpenRLHF (``openrlhf/utils/extension_hooks.py`` and its
call sites):
- ``rm_loss`` / ``dpo_loss`` (RewardModelTrainer / DPOTrainer): ``apply_loss_hooks`` in ``__init__``;
  ``get_loss_inputs`` and ``get_loss_logs`` in ``fit``; ``get_loss_inputs`` and ``get_eval_logs`` in ``evaluate``;
- ``experience`` (RemoteExperienceMaker.compute_advantages_and_returns): ``apply_experience_hooks``.
On a host with a point's call sites, hooks go into the host's registry and nothing is patched. Otherwise the
point's one owning module installs the same call sites at run time (`host.pairwise_trainer` for the trainers,
`host.experience_maker` for PPO), calling the add-on's copy of that registry (`host.extension_hooks`, the very
file the diff adds). Either way the features' code and numbers are the same.

Feature detection, not version strings: a hook point counts as present when the hooks module exists AND every
host function of the point really calls its hook function (its code names it), so a half-applied diff is not
trusted.

``OPENRLHF_FAIR_PATCH_MODE`` is a diagnostic, not a feature switch:
- ``auto`` (default): native call sites where present, runtime call sites elsewhere;
- ``runtime``: the runtime call sites even on a patched host (to compare the two);
- ``native``: audit mode for locked-down hosts: anything that would need a runtime patch (a missing hook point,
  or the dataset label patches, which have no hook point) stops before training with an error naming it.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable

from openrlhf_fair.host import extension_hooks as runtime_registry
from openrlhf_fair.errors import HostMismatchError
from openrlhf_fair.host.patching import original_of
from openrlhf_fair.host.compat import installed_openrlhf_version
from openrlhf_fair.host.patch_folders import hook_diff_folder

PATCH_MODE_ENV = "OPENRLHF_FAIR_PATCH_MODE"
PATCH_MODES = ("auto", "native", "runtime")
HOOKS_MODULE = "openrlhf.utils.extension_hooks"

# Hook point -> (host module, [(function qualname, hook function it must call), ...]).
HOOK_POINTS = {
    "rm_loss": (
        "openrlhf.trainer.rm_trainer",
        [
            ("RewardModelTrainer.__init__", "apply_loss_hooks"),
            ("RewardModelTrainer.fit", "get_loss_inputs"),
            ("RewardModelTrainer.fit", "get_loss_logs"),
            ("RewardModelTrainer.evaluate", "get_loss_inputs"),
            ("RewardModelTrainer.evaluate", "get_eval_logs"),
        ],
    ),
    "dpo_loss": (
        "openrlhf.trainer.dpo_trainer",
        [
            ("DPOTrainer.__init__", "apply_loss_hooks"),
            ("DPOTrainer.fit", "get_loss_inputs"),
            ("DPOTrainer.fit", "get_loss_logs"),
            ("DPOTrainer.evaluate", "get_loss_inputs"),
            ("DPOTrainer.evaluate", "get_eval_logs"),
        ],
    ),
    "experience": (
        "openrlhf.trainer.ppo_utils.experience_maker",
        [("RemoteExperienceMaker.compute_advantages_and_returns", "apply_experience_hooks")],
    ),
}

_announced: set[str] = set()


def patch_mode() -> str:
    mode = os.environ.get(PATCH_MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in PATCH_MODES:
        raise ValueError(f"{PATCH_MODE_ENV}={mode!r}: expected one of {', '.join(PATCH_MODES)}")
    return mode


def hooks_module() -> Any | None:
    """OpenRLHF's extension-hooks module, or None on an unpatched host."""
    try:
        return importlib.import_module(HOOKS_MODULE)
    except ModuleNotFoundError as error:
        if error.name != HOOKS_MODULE:
            raise
        return None


def missing_call_sites(point: str) -> list[str]:
    """The host functions of ``point`` that do not call their hook (empty: the hook point is present)."""
    module_name, call_sites = HOOK_POINTS[point]
    if hooks_module() is None:
        return [f"{HOOKS_MODULE} (module missing)"]
    module = importlib.import_module(module_name)
    missing = []
    for qualname, hook_name in call_sites:
        owner_name, function_name = qualname.split(".")
        function = original_of(getattr(getattr(module, owner_name, None), function_name, None))
        code = getattr(inspect.unwrap(function), "__code__", None)  # through @torch.no_grad() and the like
        if code is None or hook_name not in code.co_names:
            missing.append(f"{module_name}.{qualname} (does not call {hook_name})")
    return missing


def use_native_hook(point: str) -> bool:
    """Whether the add-on should register a native hook for ``point`` (else patch at run time).

    Says which it chose in one log line per hook point and process. Fails in ``native`` mode when the host
    lacks the hook point, naming what is missing.
    """
    mode = patch_mode()
    if mode == "runtime":
        return False
    missing = missing_call_sites(point)
    if missing and mode == "native":
        raise HostMismatchError(
            f"openrlhf-fair: {PATCH_MODE_ENV}=native but the installed OpenRLHF lacks the native hook point "
            f"{point!r}: {'; '.join(missing)}. Apply patches/{hook_diff_folder(installed_openrlhf_version())}/"
            f"extension-hooks.diff to it (see patches/README.md in openrlhf-fair), or unset {PATCH_MODE_ENV}."
        )
    if not missing:
        _announce(point, f"openrlhf-fair: using OpenRLHF's native {point} hook ({HOOKS_MODULE}); no runtime patch")
    return not missing


def _announce(point: str, message: str) -> None:
    if point in _announced:
        return
    _announced.add(point)
    from openrlhf.utils.logging_utils import init_logger

    init_logger("openrlhf_fair").info(message)


def runtime_patching_allowed() -> bool:
    return patch_mode() != "native"


def require_runtime_patching(what: str) -> None:
    """Fail clearly when ``what`` needs a runtime patch (it has no native hook point) in ``native`` mode."""
    if not runtime_patching_allowed():
        raise HostMismatchError(
            f"openrlhf-fair: {what} has no native hook point and needs a runtime patch, but "
            f"{PATCH_MODE_ENV}=native disables runtime patching; drop that option or set {PATCH_MODE_ENV}=auto."
        )


def registry(native: bool) -> Any:
    """The hook registry the call sites of a point read: the host's (native) or the add-on's (runtime)."""
    return hooks_module() if native else runtime_registry


def register_loss_hook(
    trainer_class: type, wrap_loss: Callable[[Any, Any], Any], hook_id: str, settings: Any = None, native: bool = True
) -> Callable[[], None]:
    """Register ``wrap_loss(trainer, loss_fn) -> loss_fn`` for trainers of ``trainer_class``; return the undo.

    The loss hooks run for every trainer, so the hook leaves other trainers' losses alone. Registering the same
    ``hook_id`` with the same ``settings`` again is harmless (one hook, a no-op undo), like
    `patching.patch_attribute`; with other settings it is an error. ``native``: into the host's registry
    (else the add-on's, read by the runtime call sites).
    """

    def hook(trainer: Any, loss_fn: Any) -> Any:
        return wrap_loss(trainer, loss_fn) if isinstance(trainer, trainer_class) else loss_fn

    return _register(registry(native), "register_loss_hook", hook, hook_id, settings)


def register_eval_hook(
    trainer_class: type, eval_logs: Callable[[Any], dict], hook_id: str, settings: Any = None, native: bool = True
) -> Callable[[], None]:
    """Register ``eval_logs(trainer) -> dict`` (scalars for the eval logs) for trainers of ``trainer_class``."""

    def hook(trainer: Any) -> dict:
        return eval_logs(trainer) if isinstance(trainer, trainer_class) else {}

    return _register(registry(native), "register_eval_hook", hook, hook_id, settings)


def register_experience_hook(
    shape: Callable[[Any, list], list], hook_id: str, settings: Any = None, native: bool = True
) -> Callable[[], None]:
    """Register ``shape(maker, experiences) -> experiences`` (runs after advantages are normalised); undo."""
    return _register(registry(native), "register_experience_hook", shape, hook_id, settings)


_registered: dict[str, tuple[Callable[[], None], Any]] = {}  # hook id -> (remove, settings)


def _register(hooks: Any, register_name: str, hook: Callable, hook_id: str, settings: Any) -> Callable[[], None]:
    if hook_id in _registered:
        registered_settings = _registered[hook_id][1]
        if registered_settings != settings:
            raise ValueError(
                f"openrlhf-fair: hook {hook_id} is already registered with other settings: {registered_settings}"
            )
        return lambda: None
    remove = getattr(hooks, register_name)(hook)
    entry = _registered[hook_id] = (remove, settings)

    def undo() -> None:
        if _registered.get(hook_id) is entry:
            del _registered[hook_id]
            remove()

    return undo
