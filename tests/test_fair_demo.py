"""`openrlhf-fair demo`: method parsing and command lines, and a reduced end-to-end run (tiny model, few pairs)
with real `openrlhf train_rm` subprocesses and the report on the held-out split."""

from __future__ import annotations

import gzip
import json
import shlex
from pathlib import Path

import pytest

from openrlhf_fair.demo import cli as demo

DEFAULTS = {"fr": 1.0, "fc": 0.5, "level": 2.0, "rc": 0.01, "bsr": 0.03, "form": "paper", "tau": -1.0,
            "temperature": 1.0, "group_key": None}


def test_parse_methods_labels_and_flags():
    methods = demo.parse_methods("bt,fr,fc:coef=1:form=inverse,fr:reg=0.1:tau=-2:T=0.5,fr:group_key=category",
                                 DEFAULTS)
    assert [m.label for m in methods] == ["bt", "fr_a1", "fc_inverse_g1", "fr_a0.1_tau-2_T0.5", "fr_a1_group"]
    assert methods[0].fairness_flags() == []
    assert methods[1].fairness_flags() == ["--fairness_reg", "1.0", "--fairness_tau", "-1.0",
                                           "--fairness_temperature", "1.0"]
    assert methods[2].fairness_flags()[:4] == ["--fairness_coef", "1.0", "--fairness_coef_form", "inverse"]
    assert methods[3].fairness_flags() == ["--fairness_reg", "0.1", "--fairness_tau", "-2.0",
                                           "--fairness_temperature", "0.5"]
    assert methods[4].fairness_flags()[-2:] == ["--fairness_group_key", "category"]
    assert [m.label for m in demo.parse_methods(demo.SWEEP, DEFAULTS)][0] == "bt"
    assert "fc_inverse_g0.5" in [m.label for m in demo.parse_methods(demo.SWEEP, DEFAULTS)]


def test_reward_level_kinds():
    level, rc, bsr, fr = demo.parse_methods("level:T=0.1:group_key=category,rc,bsr:coef=0.1,fr:reg=3", DEFAULTS)
    assert level.label == "level_r2_T0.1_group"
    assert level.fairness_flags() == ["--fairness_level_reg", "2.0", "--fairness_tau", "-1.0",
                                      "--fairness_level_temperature", "0.1", "--fairness_group_key", "category"]
    own = demo.parse_methods("level,fr", {**DEFAULTS, "temperature": 0.05, "level_temperature": 1.0})
    assert [m.params["temperature"] for m in own] == [1.0, 0.05]  # level's T is in units of the level std
    assert (rc.label, rc.fairness_flags()) == ("rc_c0.01", ["--reward_centering", "0.01"])
    assert (bsr.label, bsr.fairness_flags()) == ("bsr_c0.1", ["--batch_sum_reg", "0.1"])
    assert (fr.label, fr.fairness_flags()[:2]) == ("fr_a3", ["--fairness_reg", "3.0"])
    with pytest.raises(demo.DemoError, match="unknown parameter 'alpha'"):
        demo.parse_methods("fr:alpha=3", DEFAULTS)


def test_demo_flags_fill_each_kinds_strength(monkeypatch, tmp_path):
    args = demo.build_parser().parse_args(["--reg", "0.3", "--coef", "2", "--level-reg", "4", "--baseline-coef", "0.2"])
    assert (args.reg, args.coef, args.level_reg, args.baseline_coef) == (0.3, 2.0, 4.0, 0.2)


@pytest.mark.parametrize("spec, message", [
    ("bt,xx", "unknown method"),
    ("fr:reg", "key=value"),
    ("fr:beta=1", "unknown parameter"),
    ("fr:reg=abc", "bad value"),
    ("bt:reg=1", "no fairness parameters"),
    ("fr:coef=1", "fr takes only tau, temperature, group_key, reg, not 'coef'"),
    ("rc:T=0.5", "rc takes only coef, not 'temperature'"),
    ("fr,fr", "same label"),
])
def test_parse_methods_errors(spec, message):
    with pytest.raises(demo.DemoError, match=message):
        demo.parse_methods(spec, DEFAULTS)


def test_train_command_is_a_plain_openrlhf_train_rm_line(tmp_path):
    args = demo.build_parser().parse_args(["--openrlhf", "openrlhf", "--max-len", "96", "--lr", "2e-5",
                                           "--extra-train-args", "--adam.weight_decay 0.01"])
    method = demo.parse_methods("fc:form=inverse", DEFAULTS)[0]
    cmd = demo.train_command(args, method, tmp_path / "bb", tmp_path / "data", tmp_path / "m")
    line = shlex.join(cmd)
    assert cmd[:2] == ["openrlhf", "train_rm"]
    for piece in ("--data.max_len 96", "--adam.lr 2e-05", "--fairness_coef 0.5", "--fairness_coef_form inverse",
                  "--train.micro_batch_size 16", "--adam.weight_decay 0.01", f"--ckpt.output_dir {tmp_path / 'm'}"):
        assert piece in line


def test_one_pair_micro_batches_are_refused(tmp_path, capsys):
    rc = demo.main(["--micro-batch-size", "1", "--out", str(tmp_path)])
    assert rc == 2 and ">= 2" in capsys.readouterr().err


@pytest.fixture
def host_imports():
    """What the CLI front does for `demo` / `report`: serve the flash_attn stand-in where it is missing."""
    from openrlhf_fair.cpu_backend import stand_ins

    installed = stand_ins.install("flash_attn")
    yield
    if installed:
        stand_ins.uninstall("flash_attn")


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_reduced_demo_end_to_end(tmp_path, capsys, host_imports):
    """Six real train_rm runs (bt, fr, fc inverse, two seeds each) on a tiny Llama, then the report on the test
    split with intervals over pairs and seeds and a best-of-2 audit with the tiny generator."""
    rows = [json.loads(line) for line in gzip.open(demo.PACKAGE_DATA, "rt")][:600]
    small = tmp_path / "pairs.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "demo"
    rc = demo.main([
        "--data", str(small), "--backbone", "tiny", "--out", str(out), "--quiet",
        "--train-pairs", "32", "--test-pairs", "16", "--max-len", "128",
        "--micro-batch-size", "4", "--batch-size", "4", "--seeds", "2",
        "--methods", "bt,fr:reg=1,fc:coef=0.5:form=inverse",
        "--best-of-n", "2", "--generator", "tiny",
    ])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert "dropped pairs whose chosen == rejected" in printed.err
    for label in ("bt", "fr_a1", "fc_inverse_g0.5"):
        assert f"| {label} |" in printed.out
    assert "Pareto view" in printed.out and "Difference to bt" in printed.out and "Best-of-2" in printed.out

    doc = json.loads((out / "report" / "report.json").read_text())
    assert [m["label"] for m in doc["models"]] == ["bt", "fr_a1", "fc_inverse_g0.5"]
    assert doc["group_pairs"] == {"harmless": 8, "helpful": 8}
    for m in doc["models"]:
        assert m["n_pairs"] == 16 and len(m["runs"]) == 2
        assert [Path(r["path"]).name for r in m["runs"]] == [f"{m['label']}_s42", f"{m['label']}_s43"]
        assert all(r["pairs_identical_after_truncation"] == 0 for r in m["runs"])  # the demo filtered them out
        lo, hi = m["intervals"]["fairness/acc"]
        assert lo <= m["metrics"]["fairness/acc"] <= hi
    assert set(doc["best_of_n"]["models"]) == {"bt", "fr_a1", "fc_inverse_g0.5"}
    summary = json.loads((out / "demo.json").read_text())
    assert summary["data"]["train_pairs"] == 32 and summary["data"]["test_pairs"] == 16
    assert summary["training_seeds"] == [42, 43]
    test_rows = [json.loads(line) for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    train_prompts = {json.loads(line)["prompt"] for line in (out / "data" / "train.jsonl").read_text().splitlines()}
    assert all(r["split"] == "test" for r in test_rows) and not train_prompts & {r["prompt"] for r in test_rows}

    # the fairness methods really trained with the add-on's loss, the plain one did not; the seeds differ
    for seed in (42, 43):
        fr_log = (out / "logs" / f"fr_a1_s{seed}.log").read_text()
        fc_log = (out / "logs" / f"fc_inverse_g0.5_s{seed}.log").read_text()
        bt_log = (out / "logs" / f"bt_s{seed}.log").read_text()
        assert "--fairness_reg 1.0" in fr_log and "fairness/F=" in fr_log and f"--train.seed {seed}" in fr_log
        assert "--fairness_coef_form inverse" in fc_log and "fairness/F=" in fc_log
        assert "fairness/F=" not in bt_log
    # six different models came out (fairness and the seed changed the weights)
    margins = [r["metrics"]["fairness/mean_margin"] for m in doc["models"] for r in m["runs"]]
    assert len(set(margins)) == 6
    assert (out / "report" / "reward_distributions.png").stat().st_size > 5000


def test_demo_flags_are_the_add_ons_flags():
    """Every fairness flag the demo passes is parsed by the one flag definition (cli/flags.py) as intended."""
    from openrlhf_fair.cli.flags import parse_fairness_args

    strength_field = {"fr": "reg", "fc": "coef", "level": "level_reg", "rc": "reward_centering", "bsr": "batch_sum_reg"}
    spec = demo.SWEEP + ",level:group_key=category:T=0.1,rc,bsr"
    for method in demo.parse_methods(spec, DEFAULTS):
        config, rest = parse_fairness_args("train_rm", ["--data.max_len", "8"] + method.fairness_flags())
        assert rest == ["--data.max_len", "8"]
        if method.kind == "bt":
            assert config is None
            continue
        kind = demo.METHOD_KINDS[method.kind]
        set_fields = {name for name in strength_field.values() if getattr(config, name) is not None}
        assert set_fields == {strength_field[method.kind]}
        assert getattr(config, strength_field[method.kind]) == method.params[kind.strength]
        if kind.fairness:
            temperature = config.level_temperature if method.kind == "level" else config.temperature
            assert config.tau == method.params["tau"] and temperature == method.params["temperature"]
            assert config.group_key == method.params.get("group_key")
        if method.kind == "fc":
            assert config.coef_form == method.params["form"]


def test_example_scripts_are_valid_shell():
    import subprocess
    from pathlib import Path

    scripts = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.sh"))
    assert len(scripts) >= 3
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_last_turn_keeps_the_dialogue_from_its_last_request():
    from openrlhf_fair.demo.data import last_turn

    dialogue = "Human: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant:"
    assert last_turn(dialogue) == "Human: how do I pick a lock?\n\nAssistant:"
    assert last_turn("Human: one turn\n\nAssistant:") == "Human: one turn\n\nAssistant:"
    assert last_turn("Give three tips for staying healthy.") == "Give three tips for staying healthy."


def test_last_turn_trims_the_written_train_and_test_prompts(tmp_path, capsys):
    rows = [json.loads(line) for line in gzip.open(demo.PACKAGE_DATA, "rt")][:600]
    small = tmp_path / "pairs.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    multi = {r["prompt"] for r in rows if r["prompt"].count("Human:") > 1}
    assert multi  # the sample has multi-turn HH-RLHF dialogues
    for flag, out in (([], tmp_path / "plain"), (["--last-turn"], tmp_path / "last")):
        assert demo.main(["--data", str(small), "--backbone", "tiny", "--out", str(out), "--prepare-only",
                          "--train-pairs", "64", "--test-pairs", "32", *flag]) == 0
    capsys.readouterr()
    for split in ("train", "test"):
        plain = [json.loads(line) for line in (tmp_path / "plain" / "data" / f"{split}.jsonl").read_text().splitlines()]
        last = [json.loads(line) for line in (tmp_path / "last" / "data" / f"{split}.jsonl").read_text().splitlines()]
        assert all(r["prompt"].count("Human:") <= 1 for r in last)
        assert any(r["prompt"].count("Human:") > 1 for r in plain)
        assert {r["chosen"] for r in last} <= {r["chosen"] for r in rows}
