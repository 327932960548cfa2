"""The layer that touches OpenRLHF for the fairness features (the CPU backend, `openrlhf_fair.cpu_backend`, is the
only other code that patches it).

- Features register hooks at the seam, `native_hooks` (native on a host with `patches/`, else at the runtime call
  sites their own module installs; `extension_hooks` is the add-on's copy of the hook registry the diff adds):
  `pairwise_trainer` (train_rm, train_dpo: RewardModelTrainer, DPOTrainer) and `experience_maker`
  (train_ppo_ray: RemoteExperienceMaker). `labels` holds the label-column patches, which have no hook point
  (RewardDataset, PromptDataset, SamplesGenerator).
- Shared owners several parts need: `parsed_args` (the args every OpenRLHF CLI parses), `ray_workers` (the one
  way into Ray workers), `import_hooks` (the one import hook), `compat` (the per-release differences) and
  `patching` (the patch contract).
Every module imports openrlhf inside functions only, checks the host's structure first and fails loudly naming
what moved, and patches through `patching`, so each patch is explicit, idempotent and undoable, also stacked.
"""
