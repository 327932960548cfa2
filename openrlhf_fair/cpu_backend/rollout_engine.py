"""A CPU rollout engine that OpenRLHF's vLLM rollout actor drives unchanged.

OpenRLHF's ``RolloutRayActor`` (``openrlhf/trainer/ray/vllm_engine.py``) builds ``vllm.AsyncLLMEngine``
from ``vllm.AsyncEngineArgs`` and then only calls: ``generate`` (an async generator of request outputs),
``collective_rpc`` ("init_process_group", "update_weight", "update_weight_cuda_ipc": the methods of
OpenRLHF's worker extension ``WorkerWrap``), ``sleep`` / ``wake_up`` / ``is_sleeping``,
``pause_generation`` / ``resume_generation``, ``reset_prefix_cache`` and
``output_processor.get_num_unfinished_requests()``. `CpuRolloutEngine` implements exactly that surface with
Hugging Face ``generate()`` on CPU, so the host's rollout actor, agent executors, reward-function loading
(``--reward.remote_url file.py``) and its DeepSpeed -> engine weight broadcast run as they are.

Weights arrive as in vLLM: OpenRLHF's trainer rank 0 opens a "stateless" group with every engine
(``vllm.distributed.utils.StatelessProcessGroup`` + ``PyNcclCommunicator``) and broadcasts each parameter.
The stand-ins of those two classes (`StatelessProcessGroup`, `GlooWeightCommunicator`) do the same over
gloo on loopback, on both sides.

What it does not do, and says so (`CpuRolloutUnsupported`): tensor/pipeline parallel engines, CUDA IPC
weight sync (never asked for: the CPU backend turns ``--vllm.sync_backend nccl`` into gloo, see
`ray_support`), Ray collective sync (``--vllm.sync_with_ray``), multimodal prompts, stop strings, ``n > 1``.
Packed samples are refused earlier, by the CPU backend's argument checks.

Batching: requests waiting together are decoded together, one left-padded HF ``generate`` call per batch of
at most ``max_num_seqs`` requests (vLLM's engine argument; default `DEFAULT_MAX_BATCH`, 1 gives one request at a
time). A batch holds requests with the same sampling parameters (`batch_key`); each keeps its own max tokens (a
per-row stopping criterion). A request with ``SamplingParams.seed`` runs alone after ``torch.manual_seed(seed)``;
otherwise the engine seeds torch once at start (``seed`` engine argument) and batches draw from that generator in
arrival order, so the same requests arriving the same way give the same tokens. There is no continuous batching,
prefix cache or paged KV cache: it is for small models in tests, demos and debugging.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

# Env var naming a JSON-lines file where each engine appends one record per completed weight sync
# (tests use it to check that the trained weights reach the engine).
ROLLOUT_LOG_ENV = "OPENRLHF_FAIR_ROLLOUT_LOG"
STORE_TIMEOUT_S = float(os.environ.get("OPENRLHF_FAIR_WEIGHT_SYNC_TIMEOUT", "180"))

UNSUPPORTED = "the openrlhf-fair CPU rollout engine (vLLM stand-in) does not support"
# Requests decoded together at most, unless the engine arguments set max_num_seqs (vLLM's name for it).
DEFAULT_MAX_BATCH = 64
# How long a new batch waits for more requests to arrive (OpenRLHF sends each prompt as its own Ray call).
BATCH_WAIT_S = 0.01


class CpuRolloutUnsupported(NotImplementedError):
    """A vLLM feature the CPU rollout engine cannot serve; the message names the flag to change."""


def unsupported(what: str, advice: str) -> CpuRolloutUnsupported:
    from openrlhf_fair.host.compat import in_host_spelling

    return CpuRolloutUnsupported(in_host_spelling(f"{UNSUPPORTED} {what}: {advice}"))


# --------------------------------------------------------------------------------------------------
# Weight-sync group: vLLM's StatelessProcessGroup + PyNcclCommunicator, over gloo.
# --------------------------------------------------------------------------------------------------


class StatelessProcessGroup:
    """A rendezvous (TCPStore) outside torch.distributed's default group, as vLLM's class of this name.

    Rank 0 (OpenRLHF's DeepSpeed rank 0) hosts the store on ``port``; engines connect to it.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, store):
        self.host, self.port, self.rank, self.world_size, self.store = host, port, rank, world_size, store

    @classmethod
    def create(cls, host: str, port: int, rank: int, world_size: int, data_expiration_seconds: int = 3600,
               store_timeout: float = STORE_TIMEOUT_S) -> "StatelessProcessGroup":
        import torch.distributed as dist

        store = dist.TCPStore(
            host, int(port), world_size, is_master=(rank == 0), timeout=timedelta(seconds=store_timeout)
        )
        return cls(host, int(port), rank, world_size, store)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class GlooWeightCommunicator:
    """Stand-in for vLLM's ``PyNcclCommunicator``: same constructor and ``broadcast``, over gloo on CPU.

    ``device`` and ``stream`` are accepted and ignored (there is no CUDA device or stream on CPU).
    """

    def __init__(self, group: StatelessProcessGroup, device: Any = None):
        import torch.distributed as dist

        self.rank, self.world_size = group.rank, group.world_size
        options = (dist.ProcessGroupGloo._Options if hasattr(dist.ProcessGroupGloo, "_Options")
                   else dist.ProcessGroupGloo.Options)()
        hostname = "127.0.0.1" if _is_loopback(group.host) else group.host
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=hostname)]
        options._timeout = timedelta(seconds=STORE_TIMEOUT_S)
        self._group = dist.ProcessGroupGloo(dist.PrefixStore("openrlhf_fair_weights", group.store),
                                            group.rank, group.world_size, options)

    def broadcast(self, tensor, src: int = 0, stream: Any = None):
        import torch.distributed as dist

        if tensor.device.type != "cpu":
            raise unsupported(f"a weight broadcast from device {tensor.device}", "the CPU backend keeps weights on CPU")
        buffer = tensor if tensor.is_contiguous() else tensor.contiguous()
        options = dist.BroadcastOptions()
        options.rootRank = src
        self._group.broadcast([buffer], options).wait()
        if buffer is not tensor:
            tensor.copy_(buffer)
        return tensor


def weights_fingerprint(named_tensors: Iterable[Tuple[str, Any]]) -> float:
    """Sum over all tensors of sum(float64(t) * (1 + index % 7)): equal weights give exactly equal numbers.

    Used to check that the weights a trainer saved are the ones the rollout engine last received.
    """
    import torch

    total = 0.0
    for index, (_, tensor) in enumerate(sorted(named_tensors, key=lambda item: item[0])):
        total += float(tensor.detach().to(torch.float64).sum().item()) * (1 + index % 7)
    return total


# --------------------------------------------------------------------------------------------------
# The worker: OpenRLHF's WorkerWrap methods, on a CPU model.
# --------------------------------------------------------------------------------------------------


class CpuRolloutWorker:
    """The methods OpenRLHF's ``WorkerWrap`` (its vLLM worker extension) adds, for one CPU model."""

    def __init__(self, engine: "CpuRolloutEngine"):
        self.engine = engine
        self._model_update_group: Optional[GlooWeightCommunicator] = None
        self._received = 0

    def init_process_group(self, master_address, master_port, rank_offset, world_size, group_name,
                           backend="nccl", use_ray=False):
        if use_ray:
            raise unsupported("--vllm.sync_with_ray (Ray collective weight sync)", "drop --vllm.sync_with_ray")
        rank = rank_offset  # one process per engine: vLLM's worker rank 0 + rank_offset
        group = StatelessProcessGroup.create(master_address, master_port, rank, world_size)
        self._model_update_group = GlooWeightCommunicator(group)
        print(f"openrlhf-fair CPU rollout engine: weight-sync group ready (gloo, rank {rank} of {world_size}, "
              f"{master_address}:{master_port}, requested backend {backend!r})", flush=True)

    def update_weight(self, name, dtype, shape, empty_cache=False):
        import torch

        engine = self.engine
        if self._model_update_group is None:
            raise RuntimeError("update_weight called before init_process_group")
        if dtype != engine.dtype:
            raise AssertionError(f"mismatch dtype: src {dtype}, dst {engine.dtype}")
        parameter = engine.parameters.get(name)
        if parameter is None:
            raise KeyError(f"openrlhf-fair CPU rollout engine: the trainer sent {name!r}, which the rollout "
                           f"model ({engine.model_path}) does not have (LoRA adapters are not merged on CPU)")
        if tuple(parameter.shape) != tuple(shape):
            raise ValueError(f"openrlhf-fair CPU rollout engine: {name} has shape {tuple(parameter.shape)}, "
                             f"the trainer sent {tuple(shape)}")
        weight = torch.empty(shape, dtype=dtype)
        self._model_update_group.broadcast(weight, src=0)
        with torch.no_grad():
            parameter.copy_(weight)
        self._received += 1
        if empty_cache:  # OpenRLHF sets it on the last parameter of a sync
            engine.weights_synced(self._received)
            self._received = 0

    def update_weight_cuda_ipc(self, name, dtype, shape, ipc_handles=None, empty_cache=False):
        raise unsupported(
            "CUDA IPC weight sync (--train.colocate_all with --vllm.sync_backend nccl)",
            "pass --vllm.sync_backend gloo",
        )


# --------------------------------------------------------------------------------------------------
# The engine.
# --------------------------------------------------------------------------------------------------


class _OutputProcessor:
    def __init__(self):
        self.unfinished = 0

    def get_num_unfinished_requests(self) -> int:
        return self.unfinished


def _check_engine_args(kwargs: Dict[str, Any]) -> None:
    if int(kwargs.get("tensor_parallel_size") or 1) > 1:
        raise unsupported("--vllm.tensor_parallel_size > 1", "use --vllm.tensor_parallel_size 1 (and more "
                          "--vllm.num_engines if needed)")
    if int(kwargs.get("pipeline_parallel_size") or 1) > 1:
        raise unsupported("pipeline parallel engines", "use one process per engine")
    if kwargs.get("limit_mm_per_prompt"):
        raise unsupported("multimodal prompts (--data.max_images_per_prompt)", "use text-only prompts")
    mode = kwargs.get("logprobs_mode")
    if mode not in (None, "processed_logprobs", "raw_logprobs"):
        raise unsupported(f"logprobs_mode={mode!r}", "use processed_logprobs or raw_logprobs")


def _check_worker_extension(name: Optional[str]) -> None:
    """The host's worker extension must only need methods `CpuRolloutWorker` implements."""
    if not name:
        return
    import importlib

    module_name, _, class_name = name.rpartition(".")
    extension = getattr(importlib.import_module(module_name), class_name)
    missing = [m for m in vars(extension) if not m.startswith("_") and callable(getattr(extension, m))
               and not hasattr(CpuRolloutWorker, m)]
    if missing:
        raise unsupported(f"the worker extension methods {missing} of {name}",
                          "this OpenRLHF is newer than the CPU backend; run on GPUs with vLLM")


class CpuRolloutEngine:
    """``vllm.AsyncLLMEngine`` stand-in: one HF causal LM on CPU, waiting requests decoded in batches."""

    def __init__(self, kwargs: Dict[str, Any]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _check_engine_args(kwargs)
        _check_worker_extension(kwargs.get("worker_extension_cls"))
        self.model_path = kwargs["model"]
        dtype = kwargs.get("dtype") or "bfloat16"
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else torch.bfloat16
        self.max_model_len = kwargs.get("max_model_len")
        self.logprobs_mode = kwargs.get("logprobs_mode") or "raw_logprobs"
        trust = bool(kwargs.get("trust_remote_code", False))
        self.seed = int(kwargs.get("seed") or 0)
        self.max_batch_size = int(kwargs.get("max_num_seqs") or DEFAULT_MAX_BATCH)
        torch.manual_seed(self.seed)

        started = time.time()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype,
                                                          trust_remote_code=trust)
        self.model.eval()
        self.parameters = dict(self.model.named_parameters())
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_ids[0] if self.eos_token_ids else 0

        self.worker = CpuRolloutWorker(self)
        self.output_processor = _OutputProcessor()
        self.weights_version = 0
        self._sleeping = False
        self._model_lock = asyncio.Lock()  # generation and weight updates never overlap
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._pending: List[_Request] = []  # submitted, not yet decoding, in arrival order
        self._decoder: Optional[asyncio.Future] = None  # the task decoding batches while requests wait
        print(f"openrlhf-fair CPU rollout engine: {self.model_path} loaded in {time.time() - started:.1f}s "
              f"({sum(p.numel() for p in self.parameters.values()) / 1e6:.2f}M parameters, {self.dtype}, "
              f"HF generate on CPU, batches of up to {self.max_batch_size})", flush=True)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def is_sleeping(self) -> bool:
        return self._sleeping

    async def sleep(self, level: int = 1) -> None:
        self._sleeping = True  # weights stay in host memory: there is no GPU memory to free

    async def wake_up(self, tags: Optional[List[str]] = None) -> None:
        self._sleeping = False

    async def reset_prefix_cache(self) -> bool:
        return True  # no prefix cache

    async def pause_generation(self, mode: str = "keep", **_: Any) -> None:
        """Stop starting new batches; the batch in flight finishes before weights are touched."""
        self._resumed.clear()

    async def resume_generation(self) -> None:
        self._resumed.set()

    async def collective_rpc(self, method: str, timeout: Optional[float] = None, args: tuple = (),
                             kwargs: Optional[dict] = None) -> list:
        function = getattr(self.worker, method, None)
        if function is None:
            raise unsupported(f"collective_rpc({method!r})", "this OpenRLHF is newer than the CPU backend")
        async with self._model_lock:
            result = await asyncio.to_thread(function, *args, **(kwargs or {}))
        return [result]  # one result per worker, as vLLM

    def weights_synced(self, num_tensors: int) -> None:
        self.weights_version += 1
        fingerprint = weights_fingerprint(self.parameters.items())
        print(f"openrlhf-fair CPU rollout engine: weights version {self.weights_version} received "
              f"({num_tensors} tensors, fingerprint {fingerprint:.10e})", flush=True)
        log_path = os.environ.get(ROLLOUT_LOG_ENV)
        if log_path:
            record = {"event": "weights_synced", "pid": os.getpid(), "version": self.weights_version,
                      "num_tensors": num_tensors, "fingerprint": fingerprint, "time": time.time()}
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # ---- generation ------------------------------------------------------------------------------
    async def generate(self, prompt, sampling_params, request_id: str, **_: Any):
        """Async generator yielding one final ``RequestOutput`` (vLLM yields partial ones too)."""
        from vllm.outputs import RequestOutput

        if isinstance(prompt, dict):
            if prompt.get("multi_modal_data"):
                raise unsupported("multimodal prompts", "use text-only prompts")
            token_ids = list(prompt["prompt_token_ids"])
        else:
            raise unsupported("text prompts in generate()", "pass TokensPrompt(prompt_token_ids=...)")
        if self._sleeping:
            raise RuntimeError("openrlhf-fair CPU rollout engine: generate() called while sleeping")
        request = self._request(token_ids, sampling_params)
        self._pending.append(request)
        self.output_processor.unfinished += 1
        try:
            if self._decoder is None or self._decoder.done():
                self._decoder = asyncio.ensure_future(self._decode_pending())
            completion = await request.completion
        finally:
            self.output_processor.unfinished -= 1
        yield RequestOutput(request_id=request_id, prompt=None, prompt_token_ids=token_ids,
                            outputs=[completion], finished=True)

    def _request(self, prompt_token_ids: List[int], params) -> "_Request":
        if getattr(params, "n", 1) != 1:
            raise unsupported("SamplingParams.n > 1", "OpenRLHF sends one request per sample")
        if getattr(params, "stop", None):
            raise unsupported("stop strings (SamplingParams.stop)", "use stop_token_ids")
        max_new = params.max_tokens
        if max_new is None:
            limit = self.max_model_len or self.tokenizer.model_max_length
            max_new = max(1, int(limit) - len(prompt_token_ids))
        return _Request(prompt_token_ids, params, int(max_new), batch_key(params),
                        asyncio.get_running_loop().create_future())

    async def _decode_pending(self) -> None:
        """Decode the waiting requests, one batch after another, until none is left."""
        while self._pending:
            if len(self._pending) < self.max_batch_size:  # requests sent together (one prompt's samples, ...) join
                await asyncio.sleep(BATCH_WAIT_S)
            await self._resumed.wait()
            batch = self._next_batch()
            if not batch:
                continue
            async with self._model_lock:
                try:
                    completions = await asyncio.to_thread(self._generate_batch, batch)
                except Exception as error:  # handed to every request of the batch, raised in its generate()
                    completions = [error] * len(batch)
            for request, completion in zip(batch, completions):
                if request.completion.done():  # the caller went away
                    continue
                if isinstance(completion, Exception):
                    request.completion.set_exception(completion)
                else:
                    request.completion.set_result(completion)

    def _next_batch(self) -> List["_Request"]:
        """The oldest waiting request and the next ones with the same sampling parameters, in arrival order."""
        waiting = [request for request in self._pending if not request.completion.done()]
        key = waiting[0].key if waiting else None
        batch = [request for request in waiting if request.key == key][: self.max_batch_size]
        self._pending = [request for request in waiting if not any(request is taken for taken in batch)]
        return batch

    def _generate_batch(self, batch: List["_Request"]) -> list:
        """One left-padded HF ``generate`` call for requests sharing `batch_key`; one CompletionOutput each."""
        import torch
        from transformers import GenerationConfig

        params = batch[0].params
        stop_ids = list(self.eos_token_ids) + [t for t in (params.stop_token_ids or []) if t not in self.eos_token_ids]
        if params.seed is not None:  # a seeded request runs alone (batch_key), as if it had its own generator
            torch.manual_seed(params.seed)
        longest = max(request.max_new for request in batch)
        # rows are cut at their own max_new, so the batch's min_new_tokens gives each row min(min_tokens, max_new)
        min_new = longest if params.ignore_eos else min(int(params.min_tokens or 0), longest)
        do_sample = params.temperature is not None and params.temperature > 0
        want_logprobs = params.logprobs is not None
        config = GenerationConfig(
            max_new_tokens=longest,
            min_new_tokens=min_new,
            do_sample=do_sample,
            temperature=params.temperature if do_sample else None,
            top_p=params.top_p if do_sample else None,
            top_k=(params.top_k if params.top_k and params.top_k > 0 else 0) if do_sample else None,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=stop_ids or None,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_scores=want_logprobs and self.logprobs_mode == "processed_logprobs",
            output_logits=want_logprobs and self.logprobs_mode == "raw_logprobs",
        )
        width = max(len(request.prompt_token_ids) for request in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):  # left padding: every prompt ends at column `width`
            input_ids[row, width - len(request.prompt_token_ids):] = torch.tensor(request.prompt_token_ids)
            attention_mask[row, width - len(request.prompt_token_ids):] = 1
        limits = [request.max_new for request in batch]
        stopping = [RowTokenLimits(width, limits)] if len(set(limits)) > 1 else None
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      generation_config=config, stopping_criteria=stopping)
        log_probs = None
        if want_logprobs:
            steps = out.scores if self.logprobs_mode == "processed_logprobs" else out.logits
            log_probs = [torch.log_softmax(step.float(), dim=-1) for step in steps]
        return [self._completion(out.sequences[row, width:].tolist()[: request.max_new], row, request.params,
                                 stop_ids, log_probs)
                for row, request in enumerate(batch)]

    def _completion(self, new_tokens: List[int], row: int, params, stop_ids: List[int], log_probs):
        from vllm.outputs import CompletionOutput, Logprob

        if not params.ignore_eos:  # a row that stopped is padded after its stop token: cut there
            end = next((i + 1 for i, token in enumerate(new_tokens) if token in stop_ids), len(new_tokens))
            new_tokens = new_tokens[:end]
        stopped = bool(new_tokens) and new_tokens[-1] in stop_ids and not params.ignore_eos
        logprobs = cumulative = None
        if log_probs is not None:
            logprobs, cumulative = [], 0.0
            for token, step in zip(new_tokens, log_probs):
                value = float(step[row, token].item())
                logprobs.append({token: Logprob(logprob=value, rank=None)})
                cumulative += value
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=params.skip_special_tokens)
        return CompletionOutput(index=0, text=text, token_ids=new_tokens, cumulative_logprob=cumulative,
                                logprobs=logprobs, finish_reason="stop" if stopped else "length",
                                stop_reason=new_tokens[-1] if stopped else None)


@dataclass
class _Request:
    prompt_token_ids: List[int]
    params: Any
    max_new: int
    key: tuple
    completion: "asyncio.Future"


def batch_key(params) -> tuple:
    """Requests with equal keys share one ``generate`` call: all sampling parameters but max_tokens agree.

    A request with its own seed gets a key of its own (it runs alone, after ``torch.manual_seed(seed)``).
    """
    if params.seed is not None:
        return ("seeded", id(params))
    do_sample = params.temperature is not None and params.temperature > 0
    sampling = (params.temperature, params.top_p, params.top_k) if do_sample else None
    return (sampling, int(params.min_tokens or 0), bool(params.ignore_eos), params.repetition_penalty,
            tuple(params.stop_token_ids or ()), params.logprobs is not None)


class RowTokenLimits:
    """HF stopping criterion: row i of a batch is done once it has ``limits[i]`` new tokens (per-request
    max_tokens in one ``generate`` call; HF pads a finished row until every row is done)."""

    def __init__(self, prompt_width: int, limits: List[int]):
        import torch

        self.prompt_width = prompt_width
        self.limits = torch.tensor(limits)

    def __call__(self, input_ids, scores, **_: Any):
        return (input_ids.shape[1] - self.prompt_width) >= self.limits
