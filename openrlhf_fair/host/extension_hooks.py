"""Extension points for add-ons that change a training objective without patching OpenRLHF.

All are no-ops until a hook is registered; registering returns a function that removes the hook.

- Loss hooks, ``hook(trainer, loss_fn) -> loss_fn``: called when the reward-model or DPO trainer has chosen its
  loss; the returned loss replaces it for training and evaluation. It must keep the call signature and return
  value of the loss it wraps. A hooked loss may define ``batch_inputs(batch, step) -> dict`` (extra keyword
  arguments for its call on ``batch``; ``step`` is the trainer's micro-step in ``fit``, None in ``evaluate``)
  and ``extra_logs() -> dict`` (scalars for the step logs).
- Eval hooks, ``hook(trainer) -> dict``: called at the end of the reward-model or DPO trainer's ``evaluate``;
  the scalars join its eval logs.
- Experience hooks, ``hook(maker, experiences) -> experiences``: called at the end of
  ``RemoteExperienceMaker.compute_advantages_and_returns``, after advantages are computed and normalised.
"""

from typing import Callable, Dict, List

_loss_hooks: List[Callable] = []
_eval_hooks: List[Callable] = []
_experience_hooks: List[Callable] = []


def _register(hooks: List[Callable], fn: Callable) -> Callable[[], None]:
    if not callable(fn):
        raise TypeError(f"hook must be callable, got {fn!r}")
    if fn not in hooks:
        hooks.append(fn)

    def remove():
        if fn in hooks:
            hooks.remove(fn)

    return remove


def register_loss_hook(fn: Callable) -> Callable[[], None]:
    return _register(_loss_hooks, fn)


def register_eval_hook(fn: Callable) -> Callable[[], None]:
    return _register(_eval_hooks, fn)


def register_experience_hook(fn: Callable) -> Callable[[], None]:
    return _register(_experience_hooks, fn)


def apply_loss_hooks(trainer, loss_fn):
    for hook in list(_loss_hooks):
        loss_fn = hook(trainer, loss_fn)
    return loss_fn


def apply_experience_hooks(maker, experiences):
    for hook in list(_experience_hooks):
        experiences = hook(maker, experiences)
    return experiences


def get_loss_inputs(loss_fn, batch, step=None) -> Dict:
    """Extra keyword arguments a hooked loss wants for its call on ``batch`` (empty for OpenRLHF's own losses)."""
    batch_inputs = getattr(loss_fn, "batch_inputs", None)
    return dict(batch_inputs(batch, step)) if callable(batch_inputs) else {}


def get_loss_logs(loss_fn) -> Dict[str, float]:
    """Scalars a hooked loss reports for the step logs (empty for OpenRLHF's own losses)."""
    extra_logs = getattr(loss_fn, "extra_logs", None)
    return dict(extra_logs()) if callable(extra_logs) else {}


def get_eval_logs(trainer) -> Dict[str, float]:
    """Scalars the eval hooks add to the trainer's eval logs (empty with none registered)."""
    logs: Dict[str, float] = {}
    for hook in list(_eval_hooks):
        logs.update(hook(trainer))
    return logs
