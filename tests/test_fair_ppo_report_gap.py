"""`ppo-report`'s first/last-step table (`summary_table`) against values worked out by hand: the group gap is the
highest minus the lowest label reward whatever order the labels come in (sorted first, last, or in the middle)."""

from __future__ import annotations

from openrlhf_fair.report.ppo import labels_of, summary_table

WEIGHTS_AND_F = {
    "fairness/weight_min": [(1, 0.5), (2, 0.25)],  # mean 0.375
    "fairness/weight_max": [(1, 1.5), (2, 2.0)],  # mean 1.75
    "fairness/F": [(1, 0.9), (2, 0.95)],
}


def _row(series: dict) -> str:
    lines = summary_table({"run": series}).splitlines()
    assert len(lines) == 3 and lines[0].startswith("| run | steps |") and lines[1] == "|---|---|---|---|---|---|"
    return lines[2]


def test_gap_with_the_higher_label_sorted_first():
    # step 1: a 0.5, b -0.25 -> gap 0.75; step 2: a 0.25, b 0.125 -> gap 0.125
    series = {"fairness/label_reward/a": [(1, 0.5), (2, 0.25)], "fairness/label_reward/b": [(1, -0.25), (2, 0.125)],
              **WEIGHTS_AND_F}
    assert _row(series) == ("| run | 2 | a +0.500 -> +0.250; b -0.250 -> +0.125 | 0.750 -> 0.125 | 0.375..1.750 | "
                            "0.9000 -> 0.9500 |")


def test_gap_with_the_higher_label_sorted_last_and_listed_first():
    # the same rewards with the labels swapped, and b's series listed before a's
    series = {"fairness/label_reward/b": [(1, 0.5), (2, 0.25)], "fairness/label_reward/a": [(1, -0.25), (2, 0.125)],
              **WEIGHTS_AND_F}
    assert labels_of(series) == ["a", "b"]
    assert _row(series) == ("| run | 2 | a -0.250 -> +0.125; b +0.500 -> +0.250 | 0.750 -> 0.125 | 0.375..1.750 | "
                            "0.9000 -> 0.9500 |")


def test_gap_with_the_extremes_in_the_middle():
    # step 1: x 0, y 1, z -0.5 -> gap 1.5; step 2: x 0.25, y -0.75, z 0.5 -> gap 1.25; three steps counted
    series = {"fairness/label_reward/y": [(1, 1.0), (5, 0.0), (9, -0.75)],
              "fairness/label_reward/z": [(1, -0.5), (5, 0.0), (9, 0.5)],
              "fairness/label_reward/x": [(1, 0.0), (5, 0.0), (9, 0.25)]}
    assert _row(series) == ("| run | 3 | x +0.000 -> +0.250; y +1.000 -> -0.750; z -0.500 -> +0.500 | "
                            "1.500 -> 1.250 | - | - |")


def test_one_label_no_label_and_no_fairness_metrics():
    assert _row({"fairness/label_reward/only": [(1, 0.5)], "fairness/F": [(1, 0.5)]}) == (
        "| run | 1 | only +0.500 -> +0.500 | - | - | 0.5000 -> 0.5000 |")
    # weights need both ends
    assert _row({"fairness/weight_min": [(1, 0.5)], "fairness/jain": [(1, 0.8)]}) == (
        "| run | 1 | - (no label unit) | - | - | - |")
    assert _row({}) == "| run | - | no fairness metrics (run without --fair_* flags) | | | |"
    assert labels_of({"fairness/label_rewardx": [], "fairness/label_reward/b": [], "fairness/label_reward/a": []}) == [
        "a", "b"]


def test_tags_without_the_host_prefix_are_read_and_the_rest_left_out(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from openrlhf_fair.report.ppo import read_fairness_scalars

    writer = SummaryWriter(log_dir=str(tmp_path))
    for step, value in ((1, 0.5), (2, 0.75), (3, 1.0)):
        writer.add_scalar("fairness/F", value, step)  # the namespace at the start of the tag
        writer.add_scalar("eval/fairness/jain", value / 2, step)
        writer.add_scalar("policy_loss", value, step)
    writer.close()
    assert read_fairness_scalars(tmp_path) == {"fairness/F": [(1, 0.5), (2, 0.75), (3, 1.0)],
                                               "fairness/jain": [(1, 0.25), (2, 0.375), (3, 0.5)]}


def test_the_plot_draws_each_series(monkeypatch, tmp_path):
    """The figure's data, read back from its axes: rewards per label, the weight band and its edges, F and Jain."""
    import matplotlib.pyplot as plt

    from openrlhf_fair.report.ppo import plot

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    runs = {"fair": {"fairness/label_reward/b": [(1, 0.5), (2, 0.25)], "fairness/label_reward/a": [(1, -0.5), (2, 0.0)],
                     **WEIGHTS_AND_F, "fairness/jain": [(1, 0.6), (2, 0.7)]},
            "plain": {}}
    plot(runs, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    (fig,) = figures
    rewards, weights, fairness = fig.axes
    assert [line.get_label() for line in rewards.lines] == ["fair: a", "fair: b"]
    assert [list(line.get_xdata()) for line in rewards.lines] == [[1, 2], [1, 2]]
    assert [list(line.get_ydata()) for line in rewards.lines] == [[-0.5, 0.0], [0.5, 0.25]]
    assert [line.get_linestyle() for line in rewards.lines] == ["-", "--"]  # one style per label
    assert [list(line.get_ydata()) for line in weights.lines] == [[0.5, 0.25], [1.5, 2.0]]
    assert [line.get_label() for line in weights.lines][0] == "fair" and len(weights.collections) == 1
    assert [(line.get_label(), list(line.get_ydata())) for line in fairness.lines] == [
        ("fair: F", [0.9, 0.95]), ("fair: jain", [0.6, 0.7])]
    assert [line.get_linestyle() for line in fairness.lines] == ["-", ":"]
    assert rewards.lines[0].get_color() == weights.lines[0].get_color() == fairness.lines[0].get_color()
    assert [ax.get_title() for ax in fig.axes] == ["mean reward per group (fairness/label_reward/<label>)",
                                                  "fairness weights (min..max)",
                                                  "fairness F (solid) and Jain's index (dotted)"]
    assert all(ax.get_xlabel() == "step" and ax.get_legend() is not None for ax in fig.axes)
    plt.close("all")


def test_parser_defaults():
    from openrlhf_fair.report.ppo import build_parser

    args = build_parser().parse_args(["--logdir", "a", "--logdir", "b"])
    assert args.logdir == ["a", "b"] and args.out == "ppo_report"
