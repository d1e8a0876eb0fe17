"""MMSA-format JSON configs shipped with the package (this folder is `mmsa_alignmamba.configs`)."""
from pathlib import Path

CONFIG_DIR = Path(__file__).parent
ALIGNMAMBA = CONFIG_DIR / "alignmamba.json"
