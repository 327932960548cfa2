"""`openrlhf-fair ppo-report`: training-time fairness curves of `openrlhf train_ppo_ray` runs, from TensorBoard logs.

    openrlhf-fair ppo-report --logdir RUN_TB_DIR [--logdir OTHER ...] --out DIR

Each folder holding TensorBoard event files under a --logdir is one run (named by its path below the --logdir).
From the step metrics the add-on's PPO shaping logs (OpenRLHF writes them as ``train/fairness/...``) it draws,
over steps: the mean reward of each group (``fairness/label_reward/<label>``, with ``--fair_unit label:KEY``),
the range of the fairness weights (``fairness/weight_min`` .. ``fairness/weight_max``) and the fairness F
(``fairness/F``) with Jain's index; and writes the series to ``ppo_report.json`` and a first/last-step table to
``ppo_report.md``. Runs without fairness metrics (no fairness flag) are reported as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from openrlhf_fair.core.measures import LABEL_REWARD_PREFIX, METRIC_NAMESPACE
from openrlhf_fair.errors import PpoReportError



def find_runs(logdir: Path) -> list[Path]:
    """Folders under ``logdir`` (itself included) that hold TensorBoard event files."""
    if not logdir.is_dir():
        raise PpoReportError(f"--logdir {logdir}: not a folder")
    runs = sorted({event.parent for event in logdir.rglob("events.out.tfevents.*")})
    if not runs:
        raise PpoReportError(f"--logdir {logdir}: no TensorBoard event files (events.out.tfevents.*) in it; pass "
                             "the folder given to --logger.tensorboard_dir")
    return runs


def read_fairness_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` for every fairness/* scalar of one run, the host's prefix removed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = {}
    for tag in accumulator.Tags().get("scalars", []):
        at = tag.find(METRIC_NAMESPACE)
        if at < 0:
            continue
        series[tag[at:]] = [(int(e.step), float(e.value)) for e in accumulator.Scalars(tag)]
    return series


def labels_of(series: dict) -> list[str]:
    return sorted(name[len(LABEL_REWARD_PREFIX):] for name in series if name.startswith(LABEL_REWARD_PREFIX))


def summary_table(runs: dict[str, dict]) -> str:
    lines = ["| run | steps | group reward, first step -> last step | gap first -> last | weights (min..max, mean "
             "over steps) | F first -> last |", "|---|---|---|---|---|---|"]
    for name, series in runs.items():
        if not series:
            lines.append(f"| {name} | - | no fairness metrics (run without --fair_* flags) | | | |")
            continue
        steps = len(next(iter(series.values())))
        labels = labels_of(series)
        rewards = "; ".join(f"{label} {series[LABEL_REWARD_PREFIX + label][0][1]:+.3f} -> {series[LABEL_REWARD_PREFIX + label][-1][1]:+.3f}"
                            for label in labels) or "- (no label unit)"
        gap = "-"
        if len(labels) >= 2:
            def gap_at(i):
                values = [series[LABEL_REWARD_PREFIX + label][i][1] for label in labels]
                return max(values) - min(values)
            gap = f"{gap_at(0):.3f} -> {gap_at(-1):.3f}"
        weights = "-"
        if "fairness/weight_min" in series and "fairness/weight_max" in series:
            low = [v for _, v in series["fairness/weight_min"]]
            high = [v for _, v in series["fairness/weight_max"]]
            weights = f"{sum(low) / len(low):.3f}..{sum(high) / len(high):.3f}"
        f_values = series.get("fairness/F")
        f_text = f"{f_values[0][1]:.4f} -> {f_values[-1][1]:.4f}" if f_values else "-"
        lines.append(f"| {name} | {steps} | {rewards} | {gap} | {weights} | {f_text} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for r, (name, series) in enumerate(runs.items()):
        colour = colours[r % len(colours)]
        for g, label in enumerate(labels_of(series)):
            steps, values = zip(*series[LABEL_REWARD_PREFIX + label])
            axes[0].plot(steps, values, styles[g % len(styles)], color=colour, marker=".", label=f"{name}: {label}")
        if "fairness/weight_min" in series and "fairness/weight_max" in series:
            steps, low = zip(*series["fairness/weight_min"])
            _, high = zip(*series["fairness/weight_max"])
            axes[1].fill_between(steps, low, high, color=colour, alpha=0.25)
            axes[1].plot(steps, low, color=colour, lw=1, label=name)
            axes[1].plot(steps, high, color=colour, lw=1)
        for metric, style in (("fairness/F", "-"), ("fairness/jain", ":")):
            if metric in series:
                steps, values = zip(*series[metric])
                axes[2].plot(steps, values, style, color=colour, marker=".", label=f"{name}: {metric.split('/')[1]}")
    titles = ["mean reward per group (fairness/label_reward/<label>)", "fairness weights (min..max)",
              "fairness F (solid) and Jain's index (dotted)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_report(args) -> dict:
    runs: dict[str, dict] = {}
    for logdir in args.logdir:
        logdir = Path(logdir)
        for run_dir in find_runs(logdir):
            name = str(run_dir.relative_to(logdir.parent)) if run_dir != logdir else logdir.name
            runs[name] = read_fairness_scalars(run_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ppo_report.json").write_text(json.dumps(runs, indent=1))
    table = summary_table(runs)
    (out / "ppo_report.md").write_text("# PPO fairness over training steps\n\n" + table
                                       + "\n![curves](ppo_report.png)\n")
    plot(runs, out / "ppo_report.png")
    print(table, end="")
    print(f"wrote {out / 'ppo_report.md'}, {out / 'ppo_report.png'}, {out / 'ppo_report.json'}", file=sys.stderr)
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openrlhf-fair ppo-report", description=__doc__.split("\n\n")[0])
    p.add_argument("--logdir", action="append", required=True,
                   help="a run's --logger.tensorboard_dir (or a folder of several runs); repeat to compare runs")
    p.add_argument("--out", default="ppo_report", help="output folder")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_report(args)
    except PpoReportError as error:
        print(f"openrlhf-fair ppo-report: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
