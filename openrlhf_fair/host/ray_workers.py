"""The one way into OpenRLHF's Ray workers, for the PPO fairness hook and the CPU backend alike.

OpenRLHF's PPO driver parses the command line, then every model and the experience maker run in Ray actor
processes that import OpenRLHF afresh: a patch made in the driver never reaches them (seen on Ray 2.55).
What does reach every actor is OpenRLHF's parsed args: the driver builds ``strategy = get_strategy(args)``
and passes it to each actor's constructor, so Ray pickles ``strategy.args`` into each of them.

What runs where, and when:

1. Driver, before OpenRLHF parses its flags: a feature calls ``carry_to_workers("module:function", payload)``
   (the PPO fairness hook: `host.experience_maker.apply_fairness`; the CPU backend: `cpu_backend.ray_support`).
2. Driver, when the CLI calls ``hierarchize`` (hooked through `host.parsed_args`): the nested args get one
   `WorkerSetup`, attribute ``openrlhf_fair_worker_setup``, listing the registered ``(target, payload)``.
3. Every process that unpickles those args (each Ray actor, before its ``__init__`` runs): unpickling the
   WorkerSetup calls each ``target(payload)`` there. Targets are cheap and idempotent: they defer their
   patches with `import_hooks.when_imported` until the process imports the host module, so e.g. a model
   actor never imports the experience maker because of us.
4. CPU backend only, at the start of every Ray worker process of the job: its ``ray.init`` (the one
   `cpu_backend.ray_support` wraps) passes ``with_process_start(runtime_env, entries)``, so Ray runs
   `worker_start` as the job's ``worker_process_setup_hook``, which calls each ``target(payload)`` named in
   the ``OPENRLHF_FAIR_WORKER_SETUP`` environment variable. The CPU backend needs that earlier moment: its
   workers must serve the vLLM/flash_attn stand-ins before Ray imports an actor's module (which happens
   before the actor's args arrive), and vLLM engine actors get no args. PPO fairness never uses it (Ray's
   setup hook crashed vLLM with tensor parallel > 1 on Ray <= 2.54).

Guarantees: works with ``ray job submit`` (the entrypoint runs the CLI), with an already running Ray (joined
or initialised in the driver), and on every node of a multi-node cluster where openrlhf-fair is installed
(like OpenRLHF itself). On a node without openrlhf-fair, unpickling the args raises
``ModuleNotFoundError: No module named 'openrlhf_fair'``, so every actor that would run a fairness hook fails
at construction and the run stops: it never trains without fairness. No runtime_env is needed for fairness.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Callable

from openrlhf_fair.host import parsed_args
from openrlhf_fair.host.import_hooks import when_imported  # noqa: F401  (setups defer their patches with it)

ARGS_ATTR = "openrlhf_fair_worker_setup"
HOOK_ID = "openrlhf_fair.ray_workers"
PROCESS_START_HOOK = "openrlhf_fair.host.ray_workers.worker_start"  # Ray's worker_process_setup_hook
PROCESS_START_ENV = "OPENRLHF_FAIR_WORKER_SETUP"  # JSON list of [target, payload] for `worker_start`

# Setups the driver has registered, in registration order: target -> payload.
_registered: dict[str, Any] = {}


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
    """Unpickling hook (step 3 of the module doc): rebuild the WorkerSetup and run it in this process."""
    setup = WorkerSetup(entries)
    setup.run()
    return setup


def attach(args: Any) -> Any:
    """Put the current WorkerSetup into ``args`` (a hierarchized namespace); returns args."""
    if _registered:
        setattr(args, ARGS_ATTR, WorkerSetup(_registered.items()))
    return args


def carry_to_workers(target: str, payload: Any) -> Callable[[], None]:
    """Run ``target(payload)`` in every process that receives OpenRLHF's args; return the undo function.

    Registering the same target again replaces its payload. While any setup is registered, the parsed args
    are hooked (`host.parsed_args`); the last undo unhooks them.
    """
    WorkerSetup([(target, payload)])  # validates the target's form now, in the driver
    _registered[target] = payload
    unhook = parsed_args.on_parsed_args(HOOK_ID, attach)

    def undo() -> None:
        if _registered.get(target) is payload:
            del _registered[target]
        if not _registered:
            unhook()

    return undo


def with_process_start(runtime_env: dict[str, Any], entries) -> dict[str, Any]:
    """A copy of a Ray ``runtime_env`` whose worker processes run each ``target(payload)`` at start (step 4).

    ``entries``: ``(target, payload)`` pairs, payloads JSON-serialisable. Raises ValueError when the runtime_env
    already names another ``worker_process_setup_hook`` (Ray takes only one).
    """
    hook = runtime_env.get("worker_process_setup_hook")
    if hook not in (None, PROCESS_START_HOOK):
        raise ValueError(f"ray.init already has worker_process_setup_hook={hook!r}; openrlhf-fair needs its own "
                         f"({PROCESS_START_HOOK})")
    WorkerSetup(entries)  # validates the targets' form now, in the driver
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars[PROCESS_START_ENV] = json.dumps([[target, payload] for target, payload in entries])
    return {**runtime_env, "env_vars": env_vars, "worker_process_setup_hook": PROCESS_START_HOOK}


def worker_start() -> None:
    """Ray's ``worker_process_setup_hook``: run the process-start setups named in ``OPENRLHF_FAIR_WORKER_SETUP``.

    Runs in every worker process of the job, Ray's idle ones included, so it must stay cheap: no torch import.
    """
    for target, payload in json.loads(os.environ.get(PROCESS_START_ENV) or "[]"):
        resolve(target)(payload)
