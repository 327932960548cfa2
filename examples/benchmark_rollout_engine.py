"""Tokens per second of the CPU rollout engine: one request at a time vs batched (target: >= 3x at 32 in flight).

The engine (`openrlhf_fair.cpu_backend.rollout_engine`, the vLLM stand-in OpenRLHF drives on CPU) is loaded once
with SmolLM2-135M-Instruct (`openrlhf_fair.fixtures.smollm2_hf`, converted once into the fixture cache). For each
number of requests in flight, the same requests (chat prompts of the repository's helpful/harmless data, as
OpenRLHF's PPO sends them: temperature 1, min_tokens 1, a fixed max_tokens) are submitted at once, alternately to
the engine with a batch size of 1 (``max_num_seqs=1``: each request decoded alone by one HF ``generate`` call, what
the engine did before it batched) and with its default batch size. Tokens per second = generated tokens (eos
included, padding not) / wall time; the ratio is batched over one-at-a-time, the median over ``--repeats``
alternations.

    nice -n 10 python examples/benchmark_rollout_engine.py [--in-flight 8 32] [--max-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "helpful_harmless_pairs.jsonl.gz"


def prompts(tokenizer, count: int) -> list[list[int]]:
    with gzip.open(DATA, "rt", encoding="utf-8") as handle:
        questions = [json.loads(line)["prompt"] for _, line in zip(range(count), handle)]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)[:256] for q in questions]


def run(engine, vllm, requests: list[list[int]], params) -> tuple[int, float]:
    """Submit all requests at once; return (generated tokens, seconds)."""
    from vllm.inputs import TokensPrompt

    async def one(index, token_ids):
        outputs = [out async for out in engine.generate(TokensPrompt(prompt_token_ids=token_ids), params, str(index))]
        return len(outputs[-1].outputs[0].token_ids)

    async def main():
        return await asyncio.gather(*(one(i, token_ids) for i, token_ids in enumerate(requests)))

    start = time.perf_counter()
    tokens = sum(asyncio.run(main()))
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8, 32], help="requests submitted at once")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two paths per size")
    parser.add_argument("--model", default=None, help="an HF model folder (default: SmolLM2-135M from the fixtures)")
    args = parser.parse_args()

    import torch

    from openrlhf_fair.cpu_backend import stand_ins
    from openrlhf_fair.fixtures import default_cache_dir, smollm2_hf

    if not stand_ins.install("vllm"):
        raise SystemExit("a real vllm is installed: this benchmark measures the CPU rollout engine (its stand-in)")
    import vllm

    model = args.model or smollm2_hf(default_cache_dir() / "smollm2_hf")
    engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(
        model=str(model), dtype="bfloat16", seed=0, tensor_parallel_size=1, trust_remote_code=True))
    batched_size = engine.max_batch_size
    params = vllm.SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=args.max_tokens, min_tokens=1,
                                 skip_special_tokens=False)
    all_prompts = prompts(engine.tokenizer, max(args.in_flight))
    print(f"model {model}, torch threads {torch.get_num_threads()}, max_tokens {args.max_tokens}, "
          f"prompt tokens {min(map(len, all_prompts))}-{max(map(len, all_prompts))}", flush=True)
    engine.max_batch_size = 1
    run(engine, vllm, all_prompts[:2], params)  # warm-up
    rows = []
    for in_flight in args.in_flight:
        requests = all_prompts[:in_flight]
        speeds = {"one at a time": [], "batched": []}
        for repeat in range(args.repeats):
            for name, size in (("one at a time", 1), ("batched", batched_size)):
                engine.max_batch_size = size
                tokens, seconds = run(engine, vllm, requests, params)
                speeds[name].append(tokens / seconds)
                print(f"{in_flight} in flight, {name}, repeat {repeat + 1}: {tokens} tokens in {seconds:.1f} s = "
                      f"{tokens / seconds:.1f} tokens/s", flush=True)
        ratios = [b / o for b, o in zip(speeds["batched"], speeds["one at a time"])]
        rows.append((in_flight, statistics.median(speeds["one at a time"]), statistics.median(speeds["batched"]),
                     statistics.median(ratios), min(ratios), max(ratios)))
    print("\n| requests in flight | one at a time (tokens/s) | batched (tokens/s) | ratio (median, min-max) |")
    print("|---|---|---|---|")
    for in_flight, one, batched, ratio, low, high in rows:
        print(f"| {in_flight} | {one:.1f} | {batched:.1f} | {ratio:.2f}x ({low:.2f}-{high:.2f}) |")


if __name__ == "__main__":
    main()
