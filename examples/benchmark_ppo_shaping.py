"""Cost of PPO fairness shaping for one rollout batch on CPU (target: under 5 ms for 8,192 samples).

Two numbers per agent unit (sample, prompt, label):
- "weights": `openrlhf_fair.core.shaping.fairness_weights` for the whole batch (sigmoid allocation, closed-form
  w_k = K dPsi/dx_k in float64, clip, renormalise) plus its metrics (F, Jain, Gini, ...): the shaping itself;
- "patch step": everything `openrlhf_fair.features.experience_maker.shape_experiences` adds to OpenRLHF's
  `compute_advantages_and_returns` (agent ids, weights, metrics, scaling each micro-batch's advantages, the
  per-sample info tensors), on fabricated micro-batches. Its cost grows with the number of micro-batches.
Pure torch (stand-in experience objects), OpenRLHF is not imported. With ``--host``, also OpenRLHF's own
``compute_advantages_and_returns`` (reinforce_baseline) on the same batch, and the patch step on its output
(imports OpenRLHF through the CPU backend's vllm / flash_attn stand-ins when those are missing).

    python examples/benchmark_ppo_shaping.py [--samples 8192] [--micro 8] [--actions 256] [--threads 1] [--host]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from openrlhf_fair.features.experience_maker import LABEL_INFO_KEY, shape_experiences
from openrlhf_fair.settings import PPOFairnessConfig
from openrlhf_fair.core.shaping import fairness_weights, label_agent_ids, prompt_agent_ids


def time_ms(function, repeats: int, setup=lambda: None) -> tuple[float, float]:
    function(setup())  # warm-up
    samples = []
    for _ in range(repeats):
        state = setup()
        start = time.perf_counter()
        function(state)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--n_samples_per_prompt", type=int, default=8)
    parser.add_argument("--micro", type=int, default=8, help="samples per micro-batch (OpenRLHF's rollout.micro_batch_size)")
    parser.add_argument("--actions", type=int, default=256, help="response tokens per sample (advantage width)")
    parser.add_argument("--labels", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--host", action="store_true", help="also time OpenRLHF's compute_advantages_and_returns")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    n = args.samples
    rewards = torch.randn(n, generator=g) * 2
    index = torch.randperm(n, generator=g)
    labels = [f"label{int(i) % args.labels}" for i in index // args.n_samples_per_prompt]
    advantages = torch.randn(n, args.actions, generator=g)
    lengths = [len(chunk) for chunk in index.split(args.micro)]
    maker = SimpleNamespace(strategy=SimpleNamespace(args=SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=args.n_samples_per_prompt))))
    units = {
        "sample": (lambda: torch.arange(n), "sample"),
        "prompt": (lambda: prompt_agent_ids(index, args.n_samples_per_prompt), "prompt"),
        f"label:KEY ({args.labels} labels)": (lambda: label_agent_ids(labels)[0], "label:category"),
    }

    def make_batch(with_labels: bool):
        batch, start = [], 0
        for size in lengths:
            info = {LABEL_INFO_KEY: labels[start:start + size]} if with_labels else {}
            batch.append(SimpleNamespace(rewards=rewards[start:start + size], advantages=advantages[start:start + size],
                                         index=index[start:start + size].tolist(), info=info))
            start += size
        return batch

    print(f"PPO fairness shaping of {n} samples ({len(lengths)} micro-batches of {args.micro}, {args.actions} tokens), "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median / best of {args.repeats}, ms")
    for name, (agent_ids, unit) in units.items():
        config = PPOFairnessConfig(coef=0.5, reg=0.1, unit=unit)
        ids = agent_ids()
        w_med, w_best = time_ms(lambda _: fairness_weights(rewards, ids, config).metrics(), args.repeats)
        p_med, p_best = time_ms(lambda batch: shape_experiences(maker, batch, config), args.repeats,
                                setup=lambda: make_batch(config.label_key is not None))
        print(f"  unit {name:24s} weights + metrics {w_med:7.3f} / {w_best:7.3f}    patch step {p_med:7.2f} / {p_best:7.2f}")
    if args.host:
        time_host(args, rewards, index, advantages.shape[1], lengths)


def time_host(args, rewards, index, actions, lengths) -> None:
    """OpenRLHF's compute_advantages_and_returns on the same batch, without and with the fairness patch."""
    from openrlhf_fair.cpu_backend import stand_ins

    for name in ("flash_attn", "vllm"):
        stand_ins.install(name)
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    ns = SimpleNamespace
    host_args = ns(algo=ns(advantage=ns(estimator="reinforce_baseline", gamma=1.0, lambd=1.0, no_std_norm=False)),
                   rollout=ns(n_samples_per_prompt=args.n_samples_per_prompt),
                   reward=ns(clip_range=(-10.0, 10.0), overlong_buffer_len=None, stop_properly_penalty_coef=None))
    maker = RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), ns(args=host_args), None)

    def make_batch():
        batch, start = [], 0
        for size in lengths:
            batch.append(Experience(action_mask=torch.ones(size, actions, dtype=torch.bool),
                                    kl=torch.zeros(size, actions), rewards=rewards[start:start + size].clone(),
                                    index=index[start:start + size].tolist(), info={}))
            start += size
        return batch

    repeats = max(3, args.repeats // 10)
    config = PPOFairnessConfig(coef=0.5, reg=0.1)
    host_ms, shaping_ms = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        batch = make_batch()
        start = time.perf_counter()
        batch = maker.compute_advantages_and_returns(batch)
        host_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        shape_experiences(maker, batch, config)
        shaping_ms.append((time.perf_counter() - start) * 1e3)
    host, shaping = statistics.median(host_ms), statistics.median(shaping_ms)
    print(f"  OpenRLHF compute_advantages_and_returns (reinforce_baseline, {actions} tokens) {host:.1f} ms; "
          f"the patch step on its output {shaping:.1f} ms (+{100 * shaping / host:.1f}%), median of {repeats}")


if __name__ == "__main__":
    main()
