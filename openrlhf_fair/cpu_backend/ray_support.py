"""Ray and vLLM support of the CPU backend for ``train_ppo_ray`` (driver side and every Ray worker).

OpenRLHF's PPO driver starts Ray itself (``ray.init(runtime_env=...)`` in ``openrlhf/cli/train_ppo_ray.py``)
and puts every model in a Ray actor that asks for ``num_gpus=1`` (or 0.2 when colocated). On CPU:

- `apply()` (driver) wraps ``ray.init`` so that a local Ray starts on loopback (``127.0.0.1``; Ray would
  otherwise advertise the machine's address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) with logical
  GPUs and CPUs for OpenRLHF's actors to schedule on, without the dashboard, and with the job's
  process-start setup (`host.ray_workers.with_process_start`, the one way into Ray workers) that runs
  `cpu_backend.worker_process_setup` in every Ray worker; at exit it stops that Ray and its workers. It serves
  ``import vllm`` from the stand-in (`rollout_engine`; only when vllm is not installed), waits for the
  rollout engines to be up (an engine error shows at once), sends the weights over gloo
  (``--vllm.sync_backend nccl`` and thus CUDA IPC become gloo), and rejects the PPO flags the CPU cannot
  serve (`check_ppo_args`, a `host.parsed_args` hook) before Ray starts.
- `cpu_backend.worker_process_setup()` (each Ray worker, at start) is lazy: it serves the vllm / flash_attn stand-ins
  where those packages are missing and asks `host.import_hooks.when_imported` to activate the CPU backend
  (``openrlhf_fair.cpu_backend.activate``) when the worker first imports ``openrlhf``, i.e. when it
  unpickles one of OpenRLHF's actor classes; Ray's own processes and idle workers never import torch
  (an eager torch import in every worker made Ray's agents time out on 2 cores). Workers also get the one
  PPO-only CUDA fix: the replay buffer's target device (`_cpu_replay_buffer_init`).
- `seed_worker(payload)` (each Ray actor that receives OpenRLHF's args, `host.ray_workers.carry_to_workers`)
  seeds the actor's global RNGs with the run's ``--train.seed``, so that CPU runs repeat: OpenRLHF's
  PPOTrainer actor never seeds, and its prompt loader shuffles from the global torch RNG, which torch seeds at
  random in each new process (two runs with one seed trained on different prompt orders).

Environment knobs: ``OPENRLHF_FAIR_RAY_NUM_GPUS`` / ``OPENRLHF_FAIR_RAY_NUM_CPUS`` (logical resources,
default 16 / 16). An existing cluster (``RAY_ADDRESS``) is joined as is: it must offer GPUs (logical ones:
``ray start --head --num-gpus 16 --node-ip-address 127.0.0.1``) and have openrlhf-fair installed.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time
from typing import Any, Callable, Dict

from openrlhf_fair.cpu_backend import torch_cuda
from openrlhf_fair.cpu_backend.cli_args import UnsupportedOnCpu
from openrlhf_fair.host.compat import host_arg, host_flag, set_host_arg
from openrlhf_fair.host import import_hooks, parsed_args, ray_workers
from openrlhf_fair.host.patching import patch_attribute, undo_all

PATCH_ID = "openrlhf_fair.cpu_backend.ray_support"
WORKER_TARGET = "openrlhf_fair.cpu_backend:worker_process_setup"
SEED_TARGET = "openrlhf_fair.cpu_backend.ray_support:seed_worker"
WORKER_ENV = "OPENRLHF_FAIR_RAY_WORKER"  # set in Ray workers' environment by the driver
LOOPBACK = "127.0.0.1"
RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DEFAULT_LOGICAL_GPUS = 16
DEFAULT_LOGICAL_CPUS = 16


# The payload `seed_worker` gets in every Ray actor: the run's seed, filled in by `check_parsed_args`. One dict,
# carried by reference: the args' WorkerSetup is pickled when the actors are created, after every hook ran.
_worker_seed: Dict[str, Any] = {"seed": None}


class UnsupportedPpoOnCpu(UnsupportedOnCpu):
    """A PPO flag the CPU backend cannot serve; exits (status 2) with the message before Ray starts."""


class RayStartError(RuntimeError):
    """Ray could not start on loopback; the message says what to check."""


# --------------------------------------------------------------------------------------------------
# PPO flags the CPU rollout engine cannot serve (checked on the parsed, hierarchized args).
# --------------------------------------------------------------------------------------------------



def check_ppo_args(args) -> None:
    """Raise `UnsupportedPpoOnCpu` naming every PPO flag the CPU backend cannot serve."""
    problems = []
    if not host_arg(args, "vllm.num_engines"):
        problems.append("--vllm.num_engines missing or 0: OpenRLHF 0.11 has no rollout path without vLLM engines; "
                        "pass --vllm.num_engines 1 (the CPU rollout engine stands in for vLLM)")
    if (host_arg(args, "vllm.tensor_parallel_size") or 1) > 1:
        problems.append(f"--vllm.tensor_parallel_size {host_arg(args, 'vllm.tensor_parallel_size')}: the CPU rollout "
                        f"engine runs one process per engine; use 1")
    if host_arg(args, "vllm.sync_with_ray"):
        problems.append("--vllm.sync_with_ray: Ray collective weight sync is not supported; drop the flag "
                        "(weights go over gloo)")
    if host_arg(args, "vllm.sync_backend", "gloo") not in ("nccl", "gloo"):
        problems.append(f"--vllm.sync_backend {host_arg(args, 'vllm.sync_backend')}: weights go over gloo on CPU")
    if (host_arg(args, "data.max_images_per_prompt") or 0) > 0:
        problems.append("--data.max_images_per_prompt: multimodal rollouts are not supported on CPU")
    if problems:
        raise UnsupportedPpoOnCpu(
            "openrlhf-fair CPU backend: cannot run train_ppo_ray with\n  " + "\n  ".join(problems)
            + "\nDrop these flags, or run on a CUDA machine with vLLM (`openrlhf --no-cpu ...`)."
        )


def check_parsed_args(args) -> None:
    """The parsed-args hook (`host.parsed_args`): PPO flag checks, weight sync over gloo, and the run's seed for
    the Ray actors (`seed_worker`)."""
    if host_arg(args, "vllm.sync_backend") is not None:  # only train_ppo_ray's parser has it (default "nccl")
        check_ppo_args(args)
        _worker_seed["seed"] = host_arg(args, "train.seed")
        if host_arg(args, "vllm.sync_backend") == "nccl":
            # NCCL (and, with --train.colocate_all, CUDA IPC) needs GPUs: the weight broadcast goes over gloo.
            set_host_arg(args, "vllm.sync_backend", "gloo")
            print(f"[openrlhf-fair] CPU backend: {host_flag('vllm.sync_backend')} nccl -> gloo", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Driver: ray.init on loopback with logical GPUs and the worker hook.
# --------------------------------------------------------------------------------------------------


def _logical(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"openrlhf-fair: {name} must be a positive integer, got {value!r}")
    return int(value)


def worker_env() -> Dict[str, str]:
    """Variables every Ray worker of the job gets (with the setup hook)."""
    env = {WORKER_ENV: "1", "OPENRLHF_FAIR_CPU": "1", RAY_CLUSTER_ENV: "0"}
    for key in ("MASTER_ADDR", "GLOO_SOCKET_IFNAME", "DS_ACCELERATOR", "TORCHDYNAMO_DISABLE",
                "OPENRLHF_FAIR_ROLLOUT_LOG"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def ray_init_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """OpenRLHF's ``ray.init`` keyword arguments, completed for the CPU backend."""
    kwargs = dict(kwargs)
    runtime_env = dict(kwargs.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.update(worker_env())
    runtime_env["env_vars"] = env_vars
    try:  # every worker process of the job runs `worker_process_setup` at its start (host.ray_workers, step 4)
        kwargs["runtime_env"] = ray_workers.with_process_start(runtime_env, [(WORKER_TARGET, None)])
    except ValueError as error:
        raise RayStartError(f"openrlhf-fair CPU backend: {error}; it makes Ray workers CPU-aware") from None
    connecting = kwargs.get("address") or os.environ.get("RAY_ADDRESS")
    if not connecting:  # a local Ray started by this process: declare what OpenRLHF's actors ask for
        kwargs.setdefault("num_gpus", _logical("OPENRLHF_FAIR_RAY_NUM_GPUS", DEFAULT_LOGICAL_GPUS))
        kwargs.setdefault("num_cpus", _logical("OPENRLHF_FAIR_RAY_NUM_CPUS", DEFAULT_LOGICAL_CPUS))
        kwargs.setdefault("_node_ip_address", LOOPBACK)
        kwargs.setdefault("include_dashboard", False)
    return kwargs


def _cpu_ray_init(original):
    def init(*args, **kwargs):
        full = ray_init_kwargs(kwargs)
        joining = full.get("address") or os.environ.get("RAY_ADDRESS")
        if joining:
            print(f"[openrlhf-fair] CPU backend: joining the Ray cluster at {joining}; it must offer GPUs (logical "
                  f"ones: `ray start --head --num-gpus 16 --node-ip-address 127.0.0.1`)", file=sys.stderr, flush=True)
        else:
            print(f"[openrlhf-fair] CPU backend: starting Ray on {LOOPBACK} with {full['num_gpus']} logical GPUs "
                  f"and {full['num_cpus']} logical CPUs", file=sys.stderr, flush=True)
        try:
            context = original(*args, **full)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as error:
            if joining:
                advice = f"could not join the Ray cluster at {joining}: is it running? Unset RAY_ADDRESS for a local run"
            else:
                advice = (f"Ray failed to start on {LOOPBACK}: check for a stale Ray (`ray status`, `ray stop`), "
                          f"free space in /tmp, and that nothing blocks loopback ports")
            raise RayStartError(f"openrlhf-fair CPU backend: {advice} ({type(error).__name__}: {error})") from error
        if not joining:
            atexit.register(stop_local_ray)  # runs before Ray's own atexit shutdown (registered at import)
        return context

    return init


def _engines_ready(original):
    """Wait until every rollout engine is constructed, so an engine that fails says why at once.

    Without this an engine error only shows when DeepSpeed rank 0 gives up waiting for the engines to join
    the weight-sync group (minutes later, as a store timeout).
    """

    def create_vllm_engines(*args, **kwargs):
        import ray

        engines = original(*args, **kwargs)
        ray.get([engine.get_num_unfinished_requests.remote() for engine in engines])
        return engines

    return create_vllm_engines


def _descendants(roots: list[int]) -> list[int]:
    children: Dict[int, list] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_local_ray(grace_s: float = 5.0) -> None:
    """Shut down the Ray this driver started and end its worker processes now.

    Ray's workers only exit once they notice their raylet is gone, which took over 30 s on a loaded 2-core
    machine; a test suite or a user's next run would otherwise compete with them for the CPU.
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    workers: list = []
    if node is not None and os.path.isdir("/proc"):
        raylets = [info.process.pid for info in node.all_processes.get("raylet", []) if info.process is not None]
        workers = _descendants(raylets)
    ray.shutdown()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in workers:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except OSError:
                continue
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}") and not _is_zombie(pid)]
            time.sleep(0.1)
        if not alive:
            return
        workers = alive


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _loopback_ray(env=os.environ) -> None:
    """Keep Ray on 127.0.0.1 (its node address, GCS, and what OpenRLHF passes as master address)."""
    env[RAY_CLUSTER_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray already imported: the constant was read at import
        constants.ENABLE_RAY_CLUSTER = False


def _install_vllm_stand_in() -> bool:
    from openrlhf_fair.cpu_backend import stand_ins

    return stand_ins.install("vllm")


def apply() -> Callable[[], None]:
    """Driver side for ``train_ppo_ray`` (or, inside a Ray worker, the worker side); return the undo function."""
    if os.environ.get(WORKER_ENV) == "1":
        return _apply_in_worker()
    vllm_stand_in = _install_vllm_stand_in()  # first: openrlhf's PPO modules import vllm at module top
    import ray
    import openrlhf.trainer.ray as ppo_ray

    _loopback_ray()
    if ray.is_initialized():
        print("[openrlhf-fair] CPU backend: Ray is already initialised in this process; its workers only become "
              "CPU-aware if it was started with ray_support.ray_init_kwargs(...)", file=sys.stderr)
    undos = [
        patch_attribute(ray, "init", _cpu_ray_init, PATCH_ID),
        parsed_args.on_parsed_args(PATCH_ID, check_parsed_args),
        patch_attribute(ppo_ray, "create_vllm_engines", _engines_ready, PATCH_ID),
        ray_workers.carry_to_workers(SEED_TARGET, _worker_seed),
        lambda: _worker_seed.update(seed=None),
    ]
    if vllm_stand_in:
        undos.append(_uninstall_vllm_stand_in)

    return undo_all(undos)


def _uninstall_vllm_stand_in() -> None:
    from openrlhf_fair.cpu_backend import stand_ins

    stand_ins.uninstall("vllm")


def _cpu_replay_buffer_init(original):
    """``NaiveReplayBuffer.__init__`` builds ``torch.device(f"cuda:{torch.cuda.current_device()}")``.

    On the CPU backend ``current_device()`` is ``cpu`` (so that ``.to(current_device())`` stays on CPU), which
    makes that string invalid: the original runs with a CUDA index for that one line, then the buffer's
    target device becomes the CPU.
    """

    def __init__(self, *args, **kwargs):
        import torch

        with torch_cuda.cuda_index_zero():
            original(self, *args, **kwargs)
        self.target_device = torch.device("cpu")

    return __init__


def _apply_in_worker() -> Callable[[], None]:
    undos = [_uninstall_vllm_stand_in] if _install_vllm_stand_in() else []  # first: openrlhf's PPO imports vllm
    from openrlhf.trainer.ppo_utils import replay_buffer

    undos.append(patch_attribute(replay_buffer.NaiveReplayBuffer, "__init__", _cpu_replay_buffer_init, PATCH_ID))

    return undo_all(undos)


# --------------------------------------------------------------------------------------------------
# Ray workers: at process start (host.ray_workers), lazy until the worker imports `openrlhf`.
# --------------------------------------------------------------------------------------------------


def seed_worker(payload: Dict[str, Any]) -> None:
    """In a Ray worker of a CPU-backend job (unpickling OpenRLHF's args): seed python, numpy and torch with the
    run's ``--train.seed`` (``payload["seed"]``) as OpenRLHF's DeepSpeed strategy seeds its model actors
    (``transformers.set_seed`` in ``setup_distributed``, which those actors run again later). What it changes is
    the PPOTrainer actor, which never seeds: its prompt loader (``strategy.setup_dataloader`` with no
    distributed group: a torch sampler without a generator) shuffles from the global torch RNG. The CPU rollout
    engine seeds itself from its engine args (``--train.seed`` + engine index, as vLLM). Elsewhere (the
    driver, a test unpickling the args) it does nothing."""
    if payload.get("seed") is None or os.environ.get(WORKER_ENV) != "1":
        return
    import transformers

    transformers.set_seed(payload["seed"])
