#!/usr/bin/env python
"""Time `openrlhf-fair report`'s scoring (pairs/s) against a bare forward pass of the same model on the same
batches, and print the ratios (target: at least 0.9).

    python examples/benchmark_report_scoring.py                          # MiniLM reward model, 256 pairs (CPU)
    python examples/benchmark_report_scoring.py --backbone tiny          # tiny random Llama (quick)
    python examples/benchmark_report_scoring.py --pairs 2048 --max-len 512 --batch-size 64 --device cuda

- report: `report.scoring.score_pairs` as the report calls it: OpenRLHF's RewardDataset tokenisation, sorting by
  length, collation, the forward passes of chosen and rejected, the float64 copy-out;
- report_shared: the same for a further model that shares the tokenizer (the report tokenises the pairs once per
  tokenizer: `scoring.tokenize_pairs`), i.e. everything above but the tokenisation;
- bare: only `model(ids, attention_mask=mask)` for the same collated batches, tokenised beforehand.
All run under torch.no_grad in the same process, in rotating order, median of --repeats each. The model is the
backbone with a value head saved the way train_rm saves it (its head is untrained: speed does not depend on the
weights' values).

Clock: on CPU the ratios come from the process's CPU time (`time.process_time`, all its threads), which other work
on a shared machine changes far less than wall time; wall times are printed too. On CUDA they come from wall time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "helpful_harmless_pairs.jsonl.gz"


def reward_model_folder(backbone: str, root: Path) -> Path:
    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.utils import get_tokenizer

    from openrlhf_fair import fixtures

    base = (fixtures.minilm_reward_backbone(fixtures.default_cache_dir() / "minilm_reward_backbone")
            if backbone == "minilm" else fixtures.build_tiny_llama(root / "tiny") if backbone == "tiny"
            else Path(backbone))
    model = get_llm_for_sequence_regression(str(base), "reward", init_value_head=True, attn_implementation="sdpa")
    tokenizer = get_tokenizer(str(base), model, "left", None)
    out = root / "rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="minilm", help="minilm, tiny or a model folder")
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--max-len", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from openrlhf_fair.cpu_backend.stand_ins import install

    install("flash_attn")
    from openrlhf_fair.report import scoring

    rows = [json.loads(line) for line in gzip.open(DATA, "rt", encoding="utf-8")][: args.pairs]
    with tempfile.TemporaryDirectory() as tmp:
        folder = reward_model_folder(args.backbone, Path(tmp))
        model, tokenizer = scoring.load_reward_model(folder, device=args.device)
        dataset = scoring._reward_dataset(rows, tokenizer, args.max_len, "prompt", "chosen", "rejected", None, False)
        items = [dataset[i] for i in range(len(dataset))]
        order = sorted(range(len(items)), key=lambda i: max(items[i][0].shape[-1], items[i][2].shape[-1]))
        batches = [dataset.collate_fn([items[i] for i in order[s: s + args.batch_size]])
                   for s in range(0, len(order), args.batch_size)]

        def report_pass():
            scoring.score_pairs(model, tokenizer, rows, max_len=args.max_len, batch_size=args.batch_size,
                                desc="benchmark")

        tokenized = scoring.tokenize_pairs(rows, tokenizer, args.max_len)

        def report_shared_pass():
            scoring.score_pairs(model, tokenizer, rows, max_len=args.max_len, batch_size=args.batch_size,
                                desc="benchmark", tokenized=tokenized)

        @torch.no_grad()
        def bare_pass():
            for c_ids, c_mask, r_ids, r_mask, _ in batches:
                model(c_ids.to(args.device), attention_mask=c_mask.to(args.device))
                model(r_ids.to(args.device), attention_mask=r_mask.to(args.device))

        passes = {"report": report_pass, "report_shared": report_shared_pass, "bare": bare_pass}
        for run in passes.values():  # warm-up
            run()
        wall = {name: [] for name in passes}
        cpu = {name: [] for name in passes}
        names = list(passes)
        for k in range(args.repeats):
            for name in names[k % 3:] + names[: k % 3]:
                start, start_cpu = time.perf_counter(), time.process_time()
                passes[name]()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    clock = "wall" if args.device.startswith("cuda") else "cpu"
    times = wall if clock == "wall" else cpu
    rate = {name: len(rows) / statistics.median(t) for name, t in times.items()}
    print(json.dumps({"backbone": args.backbone, "pairs": len(rows), "max_len": args.max_len,
                      "batch_size": args.batch_size, "device": args.device, "threads": torch.get_num_threads(),
                      "clock": clock,
                      **{f"{name}_pairs_per_s": round(r, 1) for name, r in rate.items()},
                      "ratio": round(rate["report"] / rate["bare"], 3),
                      "ratio_shared": round(rate["report_shared"] / rate["bare"], 3),
                      "wall_seconds": {k: [round(x, 2) for x in v] for k, v in wall.items()},
                      "cpu_seconds": {k: [round(x, 2) for x in v] for k, v in cpu.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
