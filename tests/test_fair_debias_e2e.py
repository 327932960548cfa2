"""`openrlhf-fair debias` on a tiny Llama reward model saved the way train_rm saves it: the command line end to end,
then the new checkpoint in OpenRLHF's own loader and in `openrlhf-fair report` (whose numbers must be the ones
debias printed), only the value head changed, strength 0 changes nothing, and the refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from conftest import BIN
from openrlhf_fair import report
from openrlhf_fair.debias import DebiasError, build_parser, run_debias
from openrlhf_fair.debias.checkpoint import RECORD_KEY

MAX_LEN = 64
WORDS = "the bread needs flour water salt and yeast then time in a warm oven until it is golden".split()


def _rows(n: int = 80) -> list[dict]:
    """Pairs of two groups whose responses vary in length (3 to 30 words)."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        chosen, rejected = (" " + " ".join(rng.choices(WORDS, k=rng.randint(3, 30))) for _ in range(2))
        rows.append({"prompt": f"Human: question {i}?\n\nAssistant:", "chosen": chosen, "rejected": rejected,
                     "category": "helpful" if i % 2 else "harmless", "split": "train"})
    return rows


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A random tiny Llama reward model saved like train_rm saves it (bf16, value head 'score', reward mean/std in
    config.json), and a pairs file."""
    from openrlhf_fair.cpu_backend.stand_ins import install, uninstall
    from openrlhf_fair.fixtures import build_tiny_llama

    installed = install("flash_attn")
    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.utils import get_tokenizer

    root = tmp_path_factory.mktemp("debias")
    base = build_tiny_llama(root / "tiny_base")
    torch.manual_seed(0)
    model = get_llm_for_sequence_regression(str(base), "reward", init_value_head=True, attn_implementation="eager",
                                            param_dtype="bf16")
    model.score.weight.data.normal_(0.0, 1.0)
    model.config.mean, model.config.std = 0.25, 2.0
    path = root / "rm"
    model.save_pretrained(path)
    get_tokenizer(str(base), model, "left", None).save_pretrained(path)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    yield path, data
    if installed:
        uninstall("flash_attn")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _args(model, data, out, *extra):
    return build_parser().parse_args(["--model", str(model), "--data", str(data), "--out", str(out), "--max-len",
                                      str(MAX_LEN), "--batch-size", "8", "--device", "cpu", *extra])


@pytest.mark.e2e
@pytest.mark.quick
@pytest.mark.timeout(600)
def test_debias_then_report_end_to_end(tiny_rm, run_cli, tmp_path):
    model, data = tiny_rm
    out = tmp_path / "debiased"
    result = run_cli(BIN / "openrlhf-fair", "debias", "--model", model, "--data", data, "--remove", "length",
                     "--remove", "group:category", "--strength", "1", "--out", out, "--max-len", MAX_LEN,
                     "--batch-size", "8", "--device", "cpu", label="debias tiny", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Spearman(reward, length)" in result.stdout and "group gap / reward std" in result.stdout
    assert "debias: hidden states" in result.stderr  # the progress bar

    record = json.loads((out / "config.json").read_text())[RECORD_KEY]
    assert [r["name"] for r in record["removed"]] == ["length", "helpful-minus-harmless"]
    assert record["pairs"] == {"total": 80, "fit": 64, "fit_used": 64, "held_out": 16}
    fit_groups = [r["category"] for i, r in enumerate(_rows()) if i not in record["held_out_pairs"]]
    assert record["removed"][1]["pairs_per_group"] == {g: fit_groups.count(g) for g in ("harmless", "helpful")}
    assert record["data"] == str(data.resolve()) and record["strength"] == 1.0

    # Only the value head changed, and it is scale * (w - sum_i (w.q_i) q_i) over the recorded basis.
    old, new = _tensors(model), _tensors(out)
    assert sorted(old) == sorted(new)
    assert all(torch.equal(old[k], new[k]) for k in old if k != "score.weight")
    basis = torch.tensor(record["basis"], dtype=torch.float64)
    w = old["score.weight"].to(torch.float64).reshape(-1)
    expected = record["scale"] * (w - (basis @ w) @ basis)
    assert new["score.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(new["score.weight"].reshape(-1).to(torch.float64), expected, rtol=1e-2, atol=1e-3)
    w_new = new["score.weight"].to(torch.float64).reshape(-1)
    assert (basis @ w_new).abs().max() < 1e-2 * w_new.norm()  # blind to the directions, up to bf16 rounding
    # train_rm's reward mean/std for --reward.normalize_enable follow the new head
    config = json.loads((out / "config.json").read_text())
    assert record["reward_mean_std_before"] == [0.25, 2.0]
    assert (config["mean"], config["std"]) != (0.25, 2.0) and config["std"] == pytest.approx(2.0, rel=0.05)

    # OpenRLHF's own loader reads it as an ordinary reward model
    from openrlhf.models import get_llm_for_sequence_regression

    loaded = get_llm_for_sequence_regression(str(out), "reward", attn_implementation="eager")
    assert torch.equal(loaded.score.weight.data.reshape(-1), new["score.weight"].reshape(-1))

    # `report` on the held-out pairs gives the figures debias printed, before (original) and after (new model),
    # and its best-of-N audit runs on the debiased model
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(rows[i]) + "\n" for i in record["held_out_pairs"]))
    report_out = tmp_path / "report"
    assert report.main(["--data", str(held), "--out", str(report_out), "--max-len", str(MAX_LEN), "--device", "cpu",
                        "--model", str(model), "--label", "original", "--model", str(out), "--label", "debiased",
                        "--resamples", "100", "--best-of-n", "2", "--generator", "tiny", "--bon-prompts", "4",
                        "--bon-max-new-tokens", "6", "--bon-cache", str(tmp_path / "cache")]) == 0
    doc = json.loads((report_out / "report.json").read_text())
    metrics = {m["label"]: m["metrics"] for m in doc["models"]}
    for label, figures in (("original", record["before"]), ("debiased", record["after"])):
        m = metrics[label]
        assert m["fairness/acc"] == pytest.approx(figures["accuracy"], abs=1e-9)
        assert m["fairness/reward_gap_over_std"] == pytest.approx(figures["gap_over_std"], abs=1e-4)
        assert m["fairness/reward_std"] == pytest.approx(figures["reward_std"], rel=1e-4)
        assert m["fairness/length_corr"] == pytest.approx(figures["pearson_reward_length"], abs=1e-4)
    assert metrics["debiased"]["fairness/reward_gap_over_std"] < metrics["original"]["fairness/reward_gap_over_std"]
    assert "debiased" in doc["best_of_n"]["models"]


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_strength_zero_changes_no_weight(tiny_rm, tmp_path):
    model, data = tiny_rm
    out = tmp_path / "same"
    zero, half = run_debias(_args(model, data, out, "--remove", "length", "--strength", "0,0.5"))
    old, new = _tensors(model), _tensors(out / "strength_0")
    assert sorted(old) == sorted(new) and all(torch.equal(old[k], new[k]) for k in old)
    assert zero["scale"] == 1.0 and zero["before"] == zero["after"]
    config = json.loads((out / "strength_0" / "config.json").read_text())
    assert (config["mean"], config["std"]) == (0.25, 2.0)
    # the second strength of the same run: its own checkpoint, the same directions, half of them removed
    record = json.loads((out / "strength_0.5" / "config.json").read_text())[RECORD_KEY]
    assert record["strength"] == 0.5 and record["basis"] == zero["basis"] == half["basis"]
    w = old["score.weight"].to(torch.float64).reshape(-1)
    basis = torch.tensor(record["basis"], dtype=torch.float64)
    torch.testing.assert_close(_tensors(out / "strength_0.5")["score.weight"].reshape(-1).to(torch.float64),
                               record["scale"] * (w - 0.5 * (basis @ w) @ basis), rtol=1e-2, atol=1e-3)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_refusals(tiny_rm, tmp_path):
    model, data = tiny_rm
    out = tmp_path / "out"

    def refused(match, *extra, model=model, data=data, out=out):
        with pytest.raises(DebiasError, match=match):
            run_debias(_args(model, data, out, *extra))

    refused("unknown --remove 'size'", "--remove", "size")
    refused("--strength must be between 0 and 1", "--remove", "length", "--strength", "0.5,1.5")
    refused("repeats a value", "--remove", "length", "--strength", "0.5,0.5")
    refused("has no column 'topic'", "--remove", "group:topic")
    refused("too few pairs to estimate the length direction", "--remove", "length", "--max-pairs", "20")
    refused("too few pairs to estimate the group direction", "--remove", "group:category", "--max-pairs", "20")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    refused("not an empty folder", "--remove", "length", out=tmp_path / "full")
    # A head that is not one linear map on the hidden state: an extra bias, or a second layer
    from safetensors.torch import load_file, save_file

    for extra in ({"score.bias": torch.zeros(1)}, {"score.2.weight": torch.zeros(1, 1)}):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        bad.mkdir()
        for f in model.iterdir():
            if f.suffix != ".safetensors":
                (bad / f.name).write_bytes(f.read_bytes())
        tensors = load_file(str(model / "model.safetensors"))
        save_file({**tensors, **extra}, str(bad / "model.safetensors"), metadata={"format": "pt"})
        refused("value head is not linear on the hidden state", "--remove", "length", model=bad)
    assert not out.exists()
