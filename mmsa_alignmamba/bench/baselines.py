"""What `mmsa bench` compares: one registry entry per model. Adding a baseline is one
``register(Baseline(...))``; the sweep, the ratios, the tables, the plots and the command's
choices all read the registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..datasets import MOSI_FEATURE_DIMS

TRANSFORMER_HEADS = 4
TRANSFORMER_FF_MULT = 4


@dataclass(frozen=True)
class Baseline:
    name: str                 # the --models name
    label: str                # how tables and plots name it
    marker: str               # its matplotlib marker
    config_model: str         # whose MMSA config it is built from
    takes_lengths: bool       # its forward takes audio_lengths / vision_lengths
    adapt: Callable | None = None  # AMIO -> AMIO, applied after MMSA builds the config model


def transformer_stack(cfg):
    """A drop-in for model.MambaStack: ``cfg.n_layers`` pre-norm Transformer encoder layers of
    width ``cfg.d_model`` (nhead 4, feed-forward 4·d, GELU) and a final LayerNorm; (B, L, d) -> (B, L, d)."""
    import torch.nn as nn
    layer = nn.TransformerEncoderLayer(cfg.d_model, nhead=TRANSFORMER_HEADS,
                                       dim_feedforward=TRANSFORMER_FF_MULT * cfg.d_model, dropout=cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)


def _with_transformer_fusion(amio):
    """AlignMamba with each Mamba stack swapped for a Transformer of the same width and depth."""
    import torch.nn as nn
    core = amio.Model
    core.fusion = nn.ModuleList(transformer_stack(core.cfg) for _ in core.fusion)
    return amio


BASELINES: dict[str, Baseline] = {}


def register(baseline: Baseline) -> None:
    BASELINES[baseline.name] = baseline


# AlignMamba first: every ratio is AlignMamba's cost over another entry's.
register(Baseline("alignmamba", "AlignMamba", "o", "alignmamba", takes_lengths=True))
register(Baseline("mult", "MulT (MMSA)", "s", "mult", takes_lengths=False))
register(Baseline("transformer", "Transformer fusion", "d", "alignmamba", takes_lengths=True,
                  adapt=_with_transformer_fusion))
MODELS = tuple(BASELINES)   # the built-in ones; the command offers whatever is registered
REFERENCE = "alignmamba"


def build_args(model: str, device: str, dataset: str = "mosi"):
    """MMSA's args dict for a benchmark model (built from its ``config_model``'s config)."""
    import torch

    from .. import host
    args = host.load_config(BASELINES[model].config_model, dataset)
    args.update(feature_dims=list(MOSI_FEATURE_DIMS), device=torch.device(device), train_mode="regression")
    return args


def build_bench_model(model: str, args):
    """MMSA's AMIO around the model, adapted as its entry says."""
    from .. import host
    amio = host.build_model(args)
    adapt = BASELINES[model].adapt
    return (adapt(amio) if adapt else amio).to(args["device"])


def random_inputs(model: str, length: int, batch: int, device: str, seed: int = 0):
    """RANDOM inputs (not real data): (text, audio, vision) and the keyword extras."""
    import torch
    g = torch.Generator().manual_seed(seed)
    tensors = tuple(torch.randn(batch, length, d, generator=g).to(device) for d in MOSI_FEATURE_DIMS)
    lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    extras = {"audio_lengths": lengths, "vision_lengths": lengths} if BASELINES[model].takes_lengths else {}
    return tensors, extras
