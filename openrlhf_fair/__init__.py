"""openrlhf-fair: reward fairness (Ouyang et al., ACL 2025) as an add-on to OpenRLHF.

Importing this package patches nothing and imports neither torch nor openrlhf; the installer
(`python -m openrlhf_fair.install`) must run before either is installed.
"""

__version__ = "0.1.0"
