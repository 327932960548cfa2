"""`openrlhf-fair report`: accuracy and fairness of saved OpenRLHF reward models on labelled preference pairs.

For each model (a folder written by `openrlhf train_rm`) and a JSON-lines file of pairs with prompt / chosen /
rejected and a group column (default `category`), it writes to --out:

- report.json: every metric (namespace `fairness/<name>`), per model, as the mean over the model's runs (models
  given one --label are training seeds of one method) with a 95% interval (bootstrap over pairs and runs), the
  paired difference to a --baseline model, the Pareto view with intervals, and with --best-of-n a selection audit;
- report.md: the same as tables, with what each column means;
- reward_distributions.png, reward_vs_length.png, accuracy_vs_fairness.png;
- pair_rewards.jsonl: the reward each model gave each response (to report again with --rewards).

Modules, by job: `data` (inputs, typed runs), `scoring` (loading and running models through OpenRLHF),
`metrics` (the numbers, pure torch), `intervals` (bootstrap), `analysis` (typed per-method results, Pareto),
`rendering` / `plots` (outputs), `sampling` / `bestofn` (the best-of-N audit), `cli`.
"""

from openrlhf_fair.report.cli import Report, build_parser, main, run_report
from openrlhf_fair.errors import ReportError
from openrlhf_fair.report.data import load_pairs

__all__ = ["Report", "ReportError", "build_parser", "load_pairs", "main", "run_report"]
