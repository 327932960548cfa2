"""Real `openrlhf train_rm` runs on CPU with a tiny Llama: flags off is bit-identical to plain OpenRLHF, FR / FC
runs train and log their metrics, the saved config records the settings, global scope over 2 ranks, group key,
and the FR run's eval group metrics recomputed from its saved model.

Four training runs: the three shared ones of fair_rm_runs (plain, flags off, FR with a group key; trained once per
session, also used by test_fair_seam_e2e) and FC with global scope over 2 ranks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fair_rm_runs import BIN, FR_TEMPERATURE, RUN_TIMEOUT, host_args, run, saved_config, scalars, weights

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fc_global(rm_workdir, run_cli, reserve_port):
    """FC (inverse form), one pair per rank, 2 ranks: only the global scope gives F its 2 pairs. Batch 2 (no
    accumulation), so each logged step is one micro-step and its loss, base loss and term can be compared; 8 pairs
    (4 steps); T = 0.02 spreads the small margins of a fresh model so that F is visibly below 1."""
    with reserve_port() as port:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "openrlhf_fair.cli.train_rm", *host_args(rm_workdir, "fc_global", micro=1, batch=2),
               "--data.max_samples", "8", "--fairness_coef", "0.5", "--fairness_coef_form", "inverse",
               "--fairness_scope", "global", "--fairness_temperature", "0.02"]
        run(run_cli, cmd, rm_workdir, "fc_global")
    return rm_workdir


@pytest.mark.host_matrix
@pytest.mark.timeout(600)
def test_flags_off_is_bit_identical_to_plain_openrlhf(rm_runs):
    ours, theirs = weights(rm_runs, "flags_off"), weights(rm_runs, "plain")
    assert ours.keys() == theirs.keys() and len(ours) > 5
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and bool((ours[key] == theirs[key]).all()), key
    assert "openrlhf_fair" not in saved_config(rm_runs, "flags_off")
    assert not any(tag.startswith("train/fairness/") for tag in scalars(rm_runs, "flags_off"))


@pytest.mark.host_matrix
@pytest.mark.timeout(600)
def test_fr_with_group_key_trains_logs_and_records(rm_runs):
    fr, bt = scalars(rm_runs, "fr_groups"), scalars(rm_runs, "plain")
    for tag in ("train/fairness/base_loss", "train/fairness/term", "train/fairness/F", "train/fairness/jain", "train/fairness/gini"):
        assert len(fr[tag]) == 4, tag  # 64 pairs / batch 16 = 4 optimizer steps, logged every step
    assert all(v == pytest.approx(2.0) for v in fr["train/fairness/items"])  # F over the 2 categories
    # The logged loss is base - 0.5 * F, not the Bradley-Terry loss of the plain run.
    assert fr["train/loss"][0] == pytest.approx(fr["train/fairness/base_loss"][0] - fr["train/fairness/term"][0], abs=1e-2)
    assert abs(fr["train/loss"][0] - bt["train/loss"][0]) > 0.2
    for tag in ("eval/fairness/jain", "eval/fairness/gini", "eval/fairness/acc/helpful", "eval/fairness/acc/harmless",
                "eval/fairness/reward/helpful", "eval/fairness/acc_gap", "eval/fairness/F_groups", "eval/fairness/reward_gap", "eval/eval_loss"):
        assert tag in fr, tag
    assert 0 <= fr["eval/fairness/acc_gap"][0] <= 1
    # The fairness gradient changed the weights.
    ours, theirs = weights(rm_runs, "fr_groups"), weights(rm_runs, "plain")
    assert any(not bool((ours[k] == theirs[k]).all()) for k in theirs)
    recorded = saved_config(rm_runs, "fr_groups")["openrlhf_fair"]
    assert recorded["method"] == "fr" and recorded["reg"] == 0.5 and recorded["group_key"] == "category"
    assert "openrlhf-fair: FR: loss = base - 0.5 * F" in (rm_runs / "fr_groups.log").read_text()


@pytest.mark.timeout(600)
def test_fc_global_scope_on_two_ranks(fc_global):
    fc = scalars(fc_global, "fc_global")
    assert all(v == 2.0 for v in fc["train/fairness/items"])  # one pair per rank, gathered from both ranks
    base, term, loss = fc["train/fairness/base_loss"], fc["train/fairness/term"], fc["train/loss"]
    F = fc["train/fairness/F"]
    assert all(t >= 1.0 for t in term)  # inverse form: F**-0.5 with F <= 1
    assert len(loss) == 4
    for step in range(4):  # one micro-step per step: F is the global one, shared by both ranks
        assert 0.5 <= F[step] <= 1.0  # Jain's index of 2 allocations
        assert term[step] == pytest.approx(F[step] ** -0.5, rel=1e-6)  # inverse form, gamma 0.5
        # the host logs the loss averaged over the ranks: mean_r(base_r * term) = mean_r(base_r) * term
        assert loss[step] == pytest.approx(base[step] * term[step], rel=5e-3)  # bf16 loss
    assert max(term) > 1.015  # F visibly below 1 (seen: 1.022), so base * term differs from base by > 3x the tolerance
    recorded = saved_config(fc_global, "fc_global")["openrlhf_fair"]
    assert (recorded["method"], recorded["coef"], recorded["coef_form"], recorded["scope"]) == ("fc", 0.5, "inverse", "global")
    assert "eval/fairness/jain" in fc


@pytest.mark.quick
@pytest.mark.timeout(300)
def test_help_shows_our_flags_then_openrlhfs():
    result = subprocess.run([str(BIN / "openrlhf"), "train_rm", "--help"], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT, env={**os.environ, "OPENRLHF_FAIR_CPU": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "--fairness_reg ALPHA" in out and "--fair_reg" not in out and "--train.micro_batch_size" in out
    assert out.index("--fairness_reg") < out.index("--train.micro_batch_size")


@pytest.mark.quick
@pytest.mark.timeout(120)
def test_bad_fairness_flag_fails_before_anything_runs(rm_workdir):
    result = subprocess.run([str(BIN / "openrlhf"), "train_rm", *host_args(rm_workdir, "bad"), "--fairness_reg", "0.1",
                             "--fairness_tau", "1"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 2
    assert "--fairness_tau 1 is degenerate" in result.stderr
    assert not (rm_workdir / "bad").exists()


def eval_metric(logs: dict, name: str) -> float:
    """The last logged value of eval metric ``name`` (e.g. "margin/helpful")."""
    tag = f"eval/fairness/{name}"
    assert tag in logs, f"{tag} not logged; eval tags: {sorted(t for t in logs if t.startswith('eval/'))}"
    return logs[tag][-1]


def eval_rewards(root: Path, name: str):
    """Rewards of the eval pairs under the SAVED model, computed as the host's evaluate does: its RewardDataset,
    batches of the run's micro-batch size in file order, its concatenated forward, bf16, one thread.
    Returns (chosen, rejected, category of each pair) as float64 tensors and a list."""
    from types import SimpleNamespace

    import torch
    from datasets import Dataset

    from openrlhf_fair.cpu_backend import stand_ins

    installed = stand_ins.install("flash_attn")
    threads = torch.get_num_threads()
    try:
        from openrlhf.datasets import RewardDataset
        from openrlhf.models import get_llm_for_sequence_regression
        from openrlhf.trainer.rm_trainer import RewardModelTrainer
        from openrlhf.utils import get_tokenizer

        torch.set_num_threads(1)
        model = get_llm_for_sequence_regression(str(root / name), "reward", attn_implementation="sdpa", param_dtype="bf16")
        model = model.to(torch.bfloat16).eval()
        tokenizer = get_tokenizer(str(root / name), model, "left", None)
        rows = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
        strategy = SimpleNamespace(args=SimpleNamespace(data=SimpleNamespace(
            prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", apply_chat_template=False)),
            ring_attn_group=None)
        dataset = RewardDataset(Dataset.from_list(rows), tokenizer, 64, strategy, num_processors=None)
        assert len(dataset) == len(rows)
        host = SimpleNamespace(tokenizer=tokenizer, strategy=strategy)
        host.concatenated_inputs = lambda *a: RewardModelTrainer.concatenated_inputs(host, *a)
        chosen, rejected = [], []
        with torch.no_grad():
            for start in range(0, len(rows), 8):
                c_ids, c_mask, r_ids, r_mask, _ = dataset.collate_fn([dataset[i] for i in range(start, min(start + 8, len(rows)))])
                for a, am, b, bm in zip(c_ids.squeeze(1), c_mask.squeeze(1), r_ids.squeeze(1), r_mask.squeeze(1)):
                    assert not torch.equal(a[am.bool()], b[bm.bool()]), "an eval pair is one token sequence twice"
                c, r, _ = RewardModelTrainer.concatenated_forward(
                    host, model, c_ids.squeeze(1), c_mask.squeeze(1), r_ids.squeeze(1), r_mask.squeeze(1))
                chosen.append(c.float().double())
                rejected.append(r.float().double())
    finally:
        torch.set_num_threads(threads)
        if installed:
            stand_ins.uninstall("flash_attn")
    return torch.cat(chosen), torch.cat(rejected), [row["category"] for row in rows]


@pytest.mark.timeout(600)
def test_fr_group_eval_metrics_equal_a_recomputation_from_the_saved_model(rm_runs):
    """Per-group mean margin, group reward gap and eval F (with the run's temperature) as logged equal the same
    numbers computed here, independently, from the saved model's rewards on the eval set; and each differs from
    what a plausible wrong quantity would give by far more than the tolerance, so a bug cannot pass."""
    import torch

    logs = scalars(rm_runs, "fr_groups")
    chosen, rejected, groups = eval_rewards(rm_runs, "fr_groups")
    names = sorted(set(groups))
    assert names == ["harmless", "helpful"]
    mask = {g: torch.tensor([x == g for x in groups]) for g in names}
    margins = chosen - rejected
    scale = float(torch.cat([chosen, rejected]).abs().max())
    tol = dict(abs=2e-3 * scale + 1e-6)  # bf16 rewards, recomputed in another process

    def check(name, truth, *wrong):
        got = eval_metric(logs, name)
        assert got == pytest.approx(truth, **tol), (name, got, truth)
        for value in wrong:
            assert abs(value - truth) > 5 * tol["abs"], f"{name}: the test cannot tell {value} from {truth}"

    print(f"eval rewards: |max| {scale:.3g}, margins {margins.min():.3g} .. {margins.max():.3g}, tolerance {tol['abs']:.2g}")
    for g in names:
        m = margins[mask[g]]
        check(f"margin/{g}", float(m.mean()), float(chosen[mask[g]].mean()), float(torch.sigmoid(m).mean()))
        # a pair whose recomputed margin is within the tolerance of 0 may count either way
        lo, hi = float((m > tol["abs"]).double().mean()), float((m > -tol["abs"]).double().mean())
        assert lo <= eval_metric(logs, f"acc/{g}") <= hi, (g, eval_metric(logs, f"acc/{g}"), lo, hi)
    # The groups' accuracies weighted by their sizes are the host's own eval accuracy (the same rewards in the
    # same process: exact), and that is not the accuracy with chosen and rejected swapped.
    host_acc = logs["eval/acc_mean"][-1]
    weighted = sum(eval_metric(logs, f"acc/{g}") * int(mask[g].sum()) for g in names) / len(groups)
    assert weighted == pytest.approx(host_acc, abs=1e-6), (weighted, host_acc)
    swapped_lo, swapped_hi = float((margins < -tol["abs"]).double().mean()), float((margins < tol["abs"]).double().mean())
    print(f"eval accuracy {host_acc:.3f}, swapped {swapped_lo:.3f} .. {swapped_hi:.3f}")
    assert not swapped_lo <= host_acc <= swapped_hi, f"the test cannot tell accuracy {host_acc} from its swapped value"
    level = {g: float(torch.cat([chosen[mask[g]], rejected[mask[g]]]).mean()) for g in names}
    chosen_only = {g: float(chosen[mask[g]].mean()) for g in names}
    check("reward_gap", max(level.values()) - min(level.values()), max(chosen_only.values()) - min(chosen_only.values()))

    def jain(x):
        return float(x.sum() ** 2 / (x.numel() * (x**2).sum()))

    f_at = {t: jain(torch.sigmoid(margins / t)) for t in (FR_TEMPERATURE, 1.0)}
    got = eval_metric(logs, "F")
    assert 1 - got == pytest.approx(1 - f_at[FR_TEMPERATURE], rel=0.05), (got, f_at)  # tau = -1: F is Jain's index
    assert abs((1 - f_at[1.0]) - (1 - f_at[FR_TEMPERATURE])) > 0.3 * (1 - f_at[FR_TEMPERATURE]), f_at
    assert eval_metric(logs, "jain") == pytest.approx(f_at[FR_TEMPERATURE], **tol)
