"""Evaluate one policy on the held-out prompts of each group: reward (the optimised RM and the judge), KL to the
reference policy, response length.

Responses are sampled as in training (temperature 1, no top-k / top-p), seeded; the chat template and the
tokenisation are OpenRLHF's (PromptDataset applies the template, the engine tokenises without special tokens).
KL is the Monte-Carlo estimate sum_t [log pi(y_t) - log pi_ref(y_t)] on the policy's own samples (0 for the base).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from rm_scoring import RewardScorer, right_padded

GROUP_KEY = "category"


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int, batch_size: int = 16):
    """(prompt ids, response ids) per prompt; a response ends at its first eos (kept, as vLLM does)."""
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = tokenizer(chunk, add_special_tokens=False, return_tensors="pt", padding=True)
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        width = enc["input_ids"].shape[1]
        for i in range(len(chunk)):
            prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
            response = out[i, width:].tolist()
            if eos in response:
                response = response[: response.index(eos) + 1]
            results.append((prompt_ids, response))
    return results


@torch.no_grad()
def sequence_logprobs(model, samples: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list[float]:
    """sum_t log pi(y_t | x, y_<t) of each (prompt ids, response ids), in right-padded batches."""
    totals = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        ids, mask = right_padded([p + r for p, r in chunk])
        logp = torch.log_softmax(model(ids, attention_mask=mask).logits.float(), -1)
        for i, (p, r) in enumerate(chunk):
            positions = torch.arange(len(p) - 1, len(p) + len(r) - 1)  # the logits that predict the response
            totals.append(logp[i, positions].gather(1, torch.tensor(r)[:, None]).sum().item())
    return totals


def evaluate_policy(cfg: dict, paths: dict, out: Path, policy: Path, result_file: Path, seed: int) -> dict:
    if result_file.is_file():
        return json.loads(result_file.read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    rows = load_rows(out / "data" / "eval_prompts.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                             add_generation_prompt=True) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(str(policy), torch_dtype=torch.float32).eval()
    samples = sample(model, tokenizer, prompts, cfg["max_new_tokens"], seed=1000 + seed)
    logp = sequence_logprobs(model, samples)
    same_weights = Path(policy).resolve() == Path(paths["policy"]).resolve()
    if same_weights:
        logp_ref = logp
    else:
        del model
        ref = AutoModelForCausalLM.from_pretrained(str(paths["policy"]), torch_dtype=torch.float32).eval()
        logp_ref = sequence_logprobs(ref, samples)
        del ref
    responses = [tokenizer.decode(r, skip_special_tokens=True) for _, r in samples]
    rm_prompts = [r["rm_prompt"] for r in rows]
    per_sample = [dict(category=row[GROUP_KEY], question=row["question"], response=text, length=len(ids),
                       kl=lp - lr) for row, text, (_, ids), lp, lr in zip(rows, responses, samples, logp, logp_ref)]
    for role in ("reward", "judge"):
        scores = RewardScorer(paths[role]).standardised(rm_prompts, responses)
        for item, score in zip(per_sample, scores):
            item[role] = score
    groups = {}
    for name in sorted({s[GROUP_KEY] for s in per_sample}):
        members = [s for s in per_sample if s[GROUP_KEY] == name]
        groups[name] = {key: sum(m[key] for m in members) / len(members) for key in ("reward", "judge", "kl", "length")}
        groups[name]["n"] = len(members)
    result = {"policy": str(policy), "seed": seed, "groups": groups, "wall_s": round(time.time() - started, 1),
              "samples": per_sample}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"[ppo-fairness] evaluated {policy} (seed {seed}) in {result['wall_s']} s: "
          + "; ".join(f"{g}: reward {v['reward']:+.3f} judge {v['judge']:+.3f} kl {v['kl']:.3f} len {v['length']:.1f}"
                      for g, v in groups.items()), file=sys.stderr, flush=True)
    return result
