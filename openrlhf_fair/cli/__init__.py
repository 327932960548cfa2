"""Command line: `openrlhf` / `openrlhf-fair`, OpenRLHF's CLI modules as subcommands plus the add-on's flags."""
