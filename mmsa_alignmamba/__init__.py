"""mmsa-alignmamba: AlignMamba (CVPR 2025) as a plugin for the MMSA framework.

Importing the package registers every `mmsa.models` / `mmsa.trainers` / `mmsa.configs` entry
point with MMSA and applies the compat fixes of `host.py` — immediately if MMSA is already
imported, otherwise as soon as it is, so that importing the pure-PyTorch modules
(`mmsa_alignmamba.model`, `.mamba`, `.alignment`) stays cheap.
"""
from .host import install_when_mmsa_imports

__version__ = "0.1.0"

install_when_mmsa_imports()
