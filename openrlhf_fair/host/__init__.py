"""The layer that touches OpenRLHF for the fairness features (the CPU backend, `openrlhf_fair.cpu_backend`, is the
only other code that does).

- Features: one module per OpenRLHF file whose behaviour a feature changes (trainers, datasets, experience maker);
  they register hooks or patch through `patching`.
- Shared owners of host symbols several parts need: `parsed_args` (``openrlhf.utils.config.hierarchize``),
  `ray_workers` (the one way into Ray workers), `import_hooks` (the one import hook), `version` (what is installed).
Every module imports openrlhf inside functions only, checks the host's structure first and fails loudly naming
what moved, and patches through `patching`, so each patch is explicit, idempotent and undoable, also stacked.
"""
