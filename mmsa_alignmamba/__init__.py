"""mmsa-alignmamba: AlignMamba (CVPR 2025) as a plugin for the MMSA framework.

Importing the package changes MMSA and this process, on purpose (README, "MMSA fixes"):

* it registers every `mmsa.models` / `mmsa.trainers` / `mmsa.configs` entry point with MMSA and
  applies the compat fixes of `mmsa_alignmamba.host` — immediately if MMSA is already imported,
  otherwise through an import hook as soon as it is, so that importing the pure-PyTorch modules
  (`mmsa_alignmamba.model`, `.mamba`, `.alignment`) stays cheap;
* one of those fixes sets glibc's mmap threshold for the whole process (freed activations go back
  to the system); `MMSA_ALIGNMAMBA_MMAP_THRESHOLD=0` in the environment leaves glibc as it is.
"""
from .host import install_when_mmsa_imports
from .predict import load_model  # torch and numpy only; MMSA is imported when a model is built

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]

install_when_mmsa_imports()

