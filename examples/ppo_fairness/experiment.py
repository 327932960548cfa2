"""Does PPO with `--fair_coef` / `--fair_reg` over groups serve the groups more equally than plain PPO?

    python examples/ppo_fairness/experiment.py --config cpu --out ppo_fairness_run      # 2 CPU cores
    python examples/ppo_fairness/experiment.py --config gpu --out ppo_fairness_gpu      # a CUDA machine with vLLM

On 2 quiet CPU cores the full CPU grid (2 estimators x 3 methods x 3 seeds: 18 PPO runs of 5-7 min, 19 evaluations
of about 1 min) takes about 2 h; `--estimators group_norm` about 1 h (examples/results/ppo_fairness/runs.json).

Steps (each skipped when its output exists, so an interrupted series resumes):
1. prepare: held-out and training prompts of two groups (`category`: helpful = AlpacaEval instructions, harmless =
   single-turn HH-RLHF requests, examples/data/), and two Bradley-Terry reward models on MiniLM trained with
   `openrlhf-fair demo --methods bt` on disjoint pairs: the *reward* the policy optimises, and a *judge* the policy
   never sees (reward hacking of the first shows as a gap between the two);
2. train: real `openrlhf train_ppo_ray` from SmolLM2-135M-Instruct, per estimator (group_norm; gae with a critic),
   method (plain: `--fair_unit label:category` only, which logs the per-group metrics with every weight exactly 1;
   coef: `--fair_coef 0.5`; reg: `--fair_reg 0.5`, both over `label:category`) and seed;
3. evaluate: the base policy and every trained one on the held-out prompts (evaluate.py);
4. summarise: per-group reward under both reward models, gaps, KL to the reference, length, with t intervals
   over seeds, into OUT/summary.md / summary.json (summarise.py), and training curves (`openrlhf-fair ppo-report`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "helpful_harmless_pairs.jsonl.gz"
GROUP_KEY = "category"

# Sizes. steps = rollout batches per run (prompts used: steps * rollout_batch, in the seed's shuffled order).
# CPU: two optimizer steps per rollout batch (train_batch 8 of its 16 samples) at actor lr 5e-5; the first pilot's
# one step per batch at 2e-5 left the held-out rewards where the base policy had them.
CONFIGS = {
    "cpu": dict(train_prompts_per_group=64, eval_prompts_per_group=32, steps=6, rollout_batch=8, samples_per_prompt=2,
                train_batch=8, micro_batch=8, max_new_tokens=24, max_len=160, episodes=1, actor_lr=5e-5,
                critic_lr=2e-5, kl_coef=0.01, rm_train_pairs=800, judge_train_pairs=400, rm_max_len=192, num_gpus_per_role=1, cpu=True),
    "gpu": dict(train_prompts_per_group=500, eval_prompts_per_group=142, steps=60, rollout_batch=64,
                samples_per_prompt=8, train_batch=256, micro_batch=16, max_new_tokens=256, max_len=768, episodes=4,
                actor_lr=1e-6, critic_lr=5e-6, kl_coef=0.01, rm_train_pairs=3000, judge_train_pairs=3000, rm_max_len=384,
                num_gpus_per_role=1, cpu=False),
}
METHODS = {
    "plain": [],
    "coef": ["--fair_coef", "0.5"],
    "reg": ["--fair_reg", "0.5"],
    "reg2": ["--fair_reg", "2.0"],  # not in the default grid: four times reg's pull toward the under-rewarded group
}
ESTIMATORS = ("group_norm", "gae")


def say(msg: str) -> None:
    print(f"[ppo-fairness {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cli(*parts: str) -> list[str]:
    script = Path(sys.executable).parent / "openrlhf"
    return ([str(script)] if script.is_file() else [sys.executable, "-m", "openrlhf_fair.cli.main"]) + list(parts)


def run_logged(cmd: list[str], log: Path, env: dict | None = None) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as out:
        out.write("$ " + " ".join(map(str, cmd)) + "\n")
        out.flush()
        rc = subprocess.call(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"failed (exit {rc}): {' '.join(map(str, cmd[:4]))} ...; last lines of {log}:\n{tail}")
    return time.time() - started


# ----------------------------------------------------------------------------------------------- 1. prepare
def _single_turn(prompt: str) -> str | None:
    """The human request of a one-turn HH dialogue ("Human: ...\\n\\nAssistant:"), else None."""
    if prompt.count("Human:") != 1 or not prompt.rstrip().endswith("Assistant:"):
        return None
    return prompt.split("Human:", 1)[1].rsplit("Assistant:", 1)[0].strip()


def prompt_rows(split: str) -> dict[str, list[dict]]:
    """Unique prompts of `split` per group: `question` (the policy's user turn), `rm_prompt` (the RM's format)."""
    rows = [json.loads(line) for line in gzip.open(DATA, "rt", encoding="utf-8")]
    groups: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["split"] != split:
            continue
        question = row["prompt"].strip() if row[GROUP_KEY] == "helpful" else _single_turn(row["prompt"])
        if question and len(question) <= 400:
            groups.setdefault(row[GROUP_KEY], {})[question] = {
                "question": question, "rm_prompt": row["prompt"], GROUP_KEY: row[GROUP_KEY]}
    return {group: sorted(by_question.values(), key=lambda r: r["question"]) for group, by_question in groups.items()}


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def prepare(cfg: dict, out: Path) -> dict:
    from openrlhf_fair import fixtures

    paths = {"policy": fixtures.smollm2_hf(fixtures.default_cache_dir() / "smollm2_135m_instruct")}
    rng = random.Random(0)
    data = out / "data"
    if not (data / "eval_prompts.jsonl").is_file():
        train, test = prompt_rows("train"), prompt_rows("test")
        ppo_train, held_out = [], []
        for group in sorted(train):
            ppo_train += rng.sample(train[group], min(cfg["train_prompts_per_group"], len(train[group])))
            held_out += rng.sample(test[group], min(cfg["eval_prompts_per_group"], len(test[group])))
        rng.shuffle(ppo_train)
        write_jsonl(ppo_train, data / "ppo_prompts.jsonl")
        write_jsonl(held_out, data / "eval_prompts.jsonl")
        say(f"prompts: {len(ppo_train)} for PPO (train split), {len(held_out)} held out (test split)")
    for role, seed in (("reward", 42), ("judge", 7)):
        folder = out / f"rm_{role}"
        if not list(folder.glob("models/*/config.json")):
            flags = ["--methods", "bt", "--skip-report", "--quiet", "--out", folder, "--seed", str(seed),
                     "--train-pairs", str(cfg[f"{'rm' if role == 'reward' else 'judge'}_train_pairs"]),
                     "--max-len", str(cfg["rm_max_len"])]
            if role == "judge":  # disjoint from the reward model's training pairs
                used = {json.loads(line)["prompt"] for line in (out / "rm_reward/data/train.jsonl").open()}
                rest = [r for r in map(json.loads, gzip.open(DATA, "rt", encoding="utf-8")) if r["prompt"] not in used]
                write_jsonl(rest, data / "judge_pairs.jsonl")
                flags += ["--data", data / "judge_pairs.jsonl"]
            say(f"training the {role} reward model (openrlhf-fair demo --methods bt, seed {seed})")
            wall = run_logged(_heavy(cli("demo", *map(str, flags))), out / f"logs/rm_{role}.log")
            say(f"  done in {wall:.0f} s")
        (paths[role],) = [p.parent for p in folder.glob("models/*/config.json")]
    reward_dir = out / "reward"
    reward_dir.mkdir(exist_ok=True)
    for name in ("reward_func.py", "rm_scoring.py"):
        shutil.copy(HERE / name, reward_dir / name)
    (reward_dir / "reward_model.txt").write_text(f"{paths['reward']}\n")
    paths["reward_func"] = reward_dir / "reward_func.py"
    return paths


# ----------------------------------------------------------------------------------------------- 2. train
def ppo_command(cfg: dict, paths: dict, out: Path, estimator: str, method: str, seed: int) -> list[str]:
    run = out / "runs" / f"{estimator}-{method}-s{seed}"
    n = str(cfg["num_gpus_per_role"])
    cmd = cli("--cpu" if cfg["cpu"] else "--no-cpu", "train_ppo_ray",
              "--actor.model_name_or_path", paths["policy"], "--actor.num_gpus_per_node", n,
              "--ref.num_gpus_per_node", n,
              "--reward.remote_url", paths["reward_func"],
              "--data.prompt_dataset", out / "data/ppo_prompts.jsonl", "--data.input_key", "question",
              "--data.label_key", "rm_prompt", "--data.apply_chat_template",
              "--rollout.batch_size", cfg["rollout_batch"], "--rollout.n_samples_per_prompt", cfg["samples_per_prompt"],
              "--rollout.micro_batch_size", cfg["micro_batch"], "--rollout.max_new_tokens", cfg["max_new_tokens"],
              "--rollout.temperature", "1.0",
              "--train.batch_size", cfg["train_batch"], "--train.micro_batch_size", cfg["micro_batch"],
              "--data.max_samples", cfg["steps"] * cfg["rollout_batch"] // cfg["episodes"],
              "--train.num_episodes", cfg["episodes"], "--train.seed", seed, "--data.max_len", cfg["max_len"],
              "--actor.adam.lr", cfg["actor_lr"], "--actor.lr_warmup_ratio", "0", "--algo.kl.init_coef", cfg["kl_coef"],
              "--algo.advantage.estimator", estimator,
              "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
              "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "1",
              "--logger.logging_steps", "1", "--logger.tensorboard_dir", run / "tb",
              "--ckpt.output_dir", run / "model", "--ckpt.path", run / "ckpt",
              *METHODS[method], "--fair_unit", f"label:{GROUP_KEY}")
    if cfg["cpu"]:
        cmd += ["--vllm.sync_backend", "gloo"]
    else:
        cmd += ["--vllm.gpu_memory_utilization", "0.5", "--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"]
    if estimator == "gae":
        cmd += ["--critic.model_name_or_path", paths["policy"], "--critic.num_gpus_per_node", n,
                "--critic.adam.lr", cfg["critic_lr"], "--critic.lr_warmup_ratio", "0"]
    return [str(part) for part in cmd]


def train(cfg: dict, paths: dict, out: Path, estimator: str, method: str, seed: int) -> Path:
    run = out / "runs" / f"{estimator}-{method}-s{seed}"
    if (run / "done.json").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    cmd = ppo_command(cfg, paths, out, estimator, method, seed)
    say(f"PPO {run.name}")
    env = {"TORCHDYNAMO_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "0"}
    wall = run_logged(_heavy(cmd), run / "train.log", env)
    (run / "done.json").write_text(json.dumps({"wall_s": round(wall, 1), "command": cmd}, indent=1))
    say(f"  done in {wall:.0f} s")
    return run


def _heavy(cmd: list[str]) -> list[str]:
    """Optionally take a machine-wide lock per training run (OPENRLHF_FAIR_HEAVY_LOCK=path), on a shared machine."""
    lock = os.environ.get("OPENRLHF_FAIR_HEAVY_LOCK")
    return (["flock", lock] + cmd) if lock else cmd


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--out", type=Path, default=Path("ppo_fairness_run"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--base-seeds", type=int, nargs="*", default=None,
                   help="evaluate the base policy with these seeds' sampling only (default: every --seeds); the base "
                        "is one model, so one seed gives its numbers and more seeds only its sampling noise")
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["plain", "coef", "reg"])
    p.add_argument("--stage", choices=["prepare", "train", "evaluate", "summarise", "all"], default="all")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a size of the config")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in cfg:
            raise SystemExit(f"--set {item}: unknown key; choose from {', '.join(cfg)}")
        cfg[key] = type(cfg[key])(value) if not isinstance(cfg[key], bool) else value.lower() in ("1", "true")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"config": args.config, **cfg}, indent=1))
    paths = prepare(cfg, out)
    if args.stage == "prepare":
        return 0
    from evaluate import evaluate_policy  # examples/ppo_fairness/evaluate.py

    for seed in args.seeds:  # seed by seed, so that an interrupted series leaves complete seeds
        if args.stage in ("evaluate", "all") and (args.base_seeds is None or seed in args.base_seeds):
            evaluate_policy(cfg, paths, out, paths["policy"], out / "eval" / f"base-s{seed}.json", seed)
        for estimator in args.estimators:
            for method in args.methods:
                if args.stage in ("train", "all"):
                    train(cfg, paths, out, estimator, method, seed)
                run = out / "runs" / f"{estimator}-{method}-s{seed}"
                if args.stage in ("evaluate", "all") and (run / "done.json").is_file():
                    evaluate_policy(cfg, paths, out, run / "model", out / "eval" / f"{run.name}.json", seed)
    if args.stage in ("summarise", "all"):
        from summarise import summarise

        summarise(out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
