"""What `mmsa bench` compares: one registry entry per model. Adding a baseline is one
``register(Baseline(...))``; the sweep, the ratios, the tables, the plots and the command's
choices all read the registry (:class:`~mmsa_alignmamba.registry.Registry`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..datasets import SHAPES
from ..registry import Registry

TRANSFORMER_HEADS = 4
TRANSFORMER_FF_MULT = 4


@dataclass(frozen=True)
class Baseline:
    name: str                 # the --models name
    label: str                # how tables and plots name it
    marker: str               # its matplotlib marker
    config_model: str         # whose MMSA config it is built from
    takes_lengths: bool       # its forward takes audio_lengths / vision_lengths / text_lengths
    adapt: Callable | None = None  # AMIO -> AMIO, applied after MMSA builds the config model
    onnx: bool = False        # run its ONNX export (export.py) in ONNX Runtime instead of PyTorch
    in_length_sweep: bool = True  # part of the default --lengths sweep (else only asked for, or --shapes)
    variant: str | None = None    # AlignMamba's ablation variant (model.ABLATIONS) whose overrides it takes


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


BASELINES = Registry("bench model")


def register(baseline: Baseline) -> None:
    BASELINES.register(baseline.name, baseline)


# AlignMamba first: every ratio is AlignMamba's cost over another entry's.
register(Baseline("alignmamba", "AlignMamba", "o", "alignmamba", takes_lengths=True))
register(Baseline("alignmamba_onnx", "AlignMamba (ONNX Runtime)", "v", "alignmamba", takes_lengths=True, onnx=True,
                  in_length_sweep=False))
register(Baseline("mult", "MulT (MMSA)", "s", "mult", takes_lengths=False))
register(Baseline("transformer", "Transformer fusion", "d", "alignmamba", takes_lengths=True,
                  adapt=_with_transformer_fusion))
register(Baseline("lf_dnn", "LF-DNN (MMSA)", "^", "lf_dnn", takes_lengths=False, in_length_sweep=False))
register(Baseline("alignmamba_banded", "AlignMamba (banded aligner)", "P", "alignmamba", takes_lengths=True,
                  in_length_sweep=False, variant="banded"))
register(Baseline("alignmamba_full_lattice", "AlignMamba (full lattice)", "X", "alignmamba", takes_lengths=True,
                  in_length_sweep=False, variant="full_lattice"))
MODELS = tuple(n for n, b in BASELINES.items() if b.in_length_sweep)   # the default length sweep
REFERENCE = "alignmamba"


def bench_args(model: str, device: str, dataset: str = "mosi"):
    """MMSA's args dict for a benchmark model (built from its ``config_model``'s config), with
    the dataset's real feature widths (no data file: benchmarks feed random inputs)."""
    from .. import host
    args = host.load_config(BASELINES[model].config_model, dataset)
    args.update(host.mmsa_run_args(device=device), feature_dims=list(SHAPES[dataset]["feature_dims"]))
    if BASELINES[model].variant:
        from ..model import ABLATIONS
        args.update(ABLATIONS[BASELINES[model].variant])
    return args


def build_bench_model(model: str, args):
    """MMSA's AMIO around the model, adapted as its entry says."""
    from .. import host
    amio = host.build_model(args)
    adapt = BASELINES[model].adapt
    return (adapt(amio) if adapt else amio).to(args["device"])


def random_inputs(model: str, lengths, batch: int, device: str, seed: int = 0, dataset: str = "mosi",
                  time_averaged: bool = False):
    """RANDOM inputs (not real data) of the dataset's widths: (text, audio, vision) and the keyword
    extras. ``lengths``: one L for every modality or (T_l, T_a, T_v). ``time_averaged``: audio and
    vision as MMSA's loader hands them to models with ``need_normalized`` (one averaged step)."""
    import torch
    t_l, t_a, t_v = (lengths,) * 3 if isinstance(lengths, int) else lengths
    if time_averaged:
        t_a = t_v = 1
    g = torch.Generator().manual_seed(seed)
    tensors = tuple(torch.randn(batch, t, d, generator=g).to(device)
                    for t, d in zip((t_l, t_a, t_v), SHAPES[dataset]["feature_dims"]))
    extras = {}
    if BASELINES[model].takes_lengths:
        # every step valid, text included: the lengths the data loader passes for full-length inputs
        extras = {f"{m}_lengths": torch.full((batch,), t, dtype=torch.long, device=device)
                  for m, t in (("audio", t_a), ("vision", t_v), ("text", t_l))}
    return tensors, extras
