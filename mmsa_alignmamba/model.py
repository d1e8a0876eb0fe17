"""AlignMamba (Li et al., CVPR 2025) as one readable PyTorch module, plus its ablations.

The defaults (configs/alignmamba.json; the paper's choices are variants, see ABLATIONS):

    audio (B,Ta,da) ─ encoder ─┐   word aligner: each word predicts its frames; the chain's
    vision (B,Tv,dv) ─ encoder ─┤   posteriors log p(frame i in word j) (B,T_m,Tl) → L_plan
    text (B,Tl,dt) ─ encoder ───┘        │
              relaxed OT onto text: each frame to its most probable word, mean per word
              X̃a, X̃v: (B,Tl,d)   (the paper's cost, 1 − cos, is ot_cost="cosine")
      → interleave [ã1, ṽ1, l1, ã2, ṽ2, l2, …] (B,3·Tl,d) → Mamba × n_layers → mean pool → head
      loss: L1(score) + μ·L_plan (+ λ·L_align with the paper's MMD², global_alignment="mmd")

Pure PyTorch: nothing here imports MMSA. `AlignMamba.from_mmsa_args` reads MMSA's config dict
(that is the object MMSA's AMIO hands every model), and `forward` keeps MMSA's calling
convention `model(text, audio, vision, **extras) -> {"M": (B,1), ...}` so MMSA's own
MMSA_test, which passes no lengths, works too.

Choices the paper leaves open are config fields (see AlignMambaConfig and the README).
Missing modalities (modality_mask from missing.py): an absent modality's encoded sequence is
replaced by a learned per-modality "missing" embedding; when the language anchor itself is
absent, OT has nothing to align to, so audio and vision fall back to the time-proportional
plan (source step i of T_m goes to anchor step ⌊i·T_l/T_m⌋), and that sample's MMD term is
dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import components
from .alignment import OTAlignment, WordAligner, bandwidth_spec
from .alignment.ot import RelaxedOT, TimeProportional
from .datasets import MODALITIES, MOSI_FEATURE_DIMS
from .mamba import Mamba
from .registry import Registry

FUSIONS = ("interleave", "single_stream", "multi_stream")
OT_COSTS = ("cosine", "monotone", "mixture")


@dataclass
class AlignMambaConfig:
    feature_dims: tuple[int, int, int] = MOSI_FEATURE_DIMS  # text, audio, vision input widths
    d_model: int = 64                 # common width d of every modality after its encoder
    n_layers: int = 2                 # Mamba blocks in the fusion stack
    d_state: int = 16                 # SSM state size N
    d_conv: int = 4                   # Mamba's causal depthwise conv width
    expand: int = 2                   # Mamba inner width = expand * d_model
    encoder_kernels: tuple[int, int, int] = (1, 3, 3)  # Conv1d kernel per modality encoder
    dropout: float = 0.1
    local_alignment: str = "ot"       # by name (mmsa.local_alignments): "ot" (paper: relaxed OT), "soft_ot" (ours),
                                      # "none" (time-proportional), or a third party's
    ot_rescale: bool = True           # aligned = T_l·MᵀX (mean-like scale) instead of MᵀX (≈1/T_m scale)
    ot_reduce: str = "mean"           # "mean" (ours): each word gets the mean of its frames; "sum": paper's MᵀX
    ot_temperature: float = 0.1       # soft_ot with the cosine cost: softmax temperature over −cost
    ot_sinkhorn_iters: int = 0        # soft_ot with the cosine cost: > 0 balances the plan's columns (Sinkhorn)
    ot_block_size: int = 1024         # source rows per block when computing the OT argmin
    ot_cost: str = "monotone"         # "cosine" (paper: 1 − cos of encoded features), or ours: the −log posterior
                                      # of a learned alignment model (alignment.WordAligner) trained by L_plan
                                      # (weight plan_weight): "monotone" (words in order, audio and vision on
                                      # one clock) or "mixture" (each frame on its own, position prior)
    ot_position_prior: float = 0.0    # cosine cost: + β·δ², δ = distance in words from the time-proportional spot
    likelihood_prior_init: float = 0.05  # mixture cost: starting β of its learned position prior
    aligner_band: int = 128           # monotone cost: words per grid step around the time-proportional word
                                      # (ours, alignment/band.py: O(T·W)); 0 or >= T_l: the full lattice, so
                                      # MMSA's 50 / 39 text slots run the full lattice and long texts stay linear
    global_alignment: str | bool = "none"  # by name (mmsa.global_alignments): "mmd" (the paper's: MMD² between
                                      # aligned audio/vision and text), "none" (ours by default: MMD gave no gain
                                      # and hurt once active, docs/method.md §3), or a third party's;
                                      # true/false = "mmd"/"none"
    mmd_sigmas: tuple[float, ...] | str = (0.5, 1.0, 2.0)  # Gaussian bandwidths, or "median"
    fusion: str = "interleave"        # "interleave" (paper), "single_stream", "multi_stream"
    final_norm: bool = False          # LayerNorm on every fused step before pooling (the first release did)
    modalities: tuple[str, ...] = MODALITIES  # drop one for the w/o-audio/vision/language ablations
    modality_dropout: float = 0.0     # training only: P(a sample's modality is treated as missing); ours
    use_bert: bool = False            # text is (B,3,T) token ids and a local BERT is fine-tuned
    pretrained: str | None = None     # local folder of that BERT (no hub downloads)

    def __post_init__(self):
        self.feature_dims = tuple(int(d) for d in self.feature_dims)
        self.encoder_kernels = tuple(int(k) for k in self.encoder_kernels)
        self.modalities = tuple(self.modalities)
        try:
            self.mmd_sigmas, sigmas_ok = bandwidth_spec(self.mmd_sigmas), True
        except (TypeError, ValueError):
            sigmas_ok = False
        if isinstance(self.global_alignment, bool):  # the first release's switch
            self.global_alignment = "mmd" if self.global_alignment else "none"
        components.LOCAL_ALIGNMENTS.entry(self.local_alignment)    # unknown names: one error listing them
        components.GLOBAL_ALIGNMENTS.entry(self.global_alignment)
        checks = [
            (self.ot_reduce in ("sum", "mean"), "ot_reduce must be 'sum' or 'mean'"),
            (self.ot_cost in OT_COSTS, f"ot_cost must be one of {OT_COSTS}"),
            (self.ot_temperature > 0, "ot_temperature must be > 0"),
            (self.ot_sinkhorn_iters >= 0, "ot_sinkhorn_iters must be >= 0"),
            (sigmas_ok, "mmd_sigmas must be 'median' or positive bandwidths"),
            (self.ot_position_prior >= 0, "ot_position_prior must be >= 0"),
            (self.likelihood_prior_init > 0, "likelihood_prior_init must be > 0"),
            (self.aligner_band >= 0, "aligner_band must be >= 0 (0: the full lattice)"),
            (self.fusion in FUSIONS, f"fusion must be one of {FUSIONS}"),
            (bool(self.modalities) and set(self.modalities) <= set(MODALITIES),
             f"modalities must be a non-empty subset of {MODALITIES}"),
            (self.d_model > 0 and self.n_layers > 0 and self.d_state > 0, "d_model, n_layers, d_state must be > 0"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.modality_dropout < 1.0, "modality_dropout must be in [0, 1)"),
            (not self.use_bert or self.pretrained, "use_bert needs `pretrained`: a local BERT folder"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"AlignMambaConfig: {message}")

    @classmethod
    def from_mmsa_args(cls, args) -> "AlignMambaConfig":
        """Pick this config's fields out of MMSA's flat args dict (extra keys are MMSA's own)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: args[k] for k in known if k in args})


class ResidualMamba(nn.Module):
    """Pre-norm residual block: x + Mamba(LayerNorm(x)). (B, L, d) -> (B, L, d)."""

    def __init__(self, cfg: AlignMambaConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.mixer = Mamba(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return x + self.dropout(self.mixer(self.norm(x)))


class MambaStack(nn.Module):
    """n_layers residual Mamba blocks: (B, L, d) -> (B, L, d); optionally a LayerNorm per step at
    the end (``final_norm``). Off by default: a per-step norm gives every step the same scale
    before pooling, so a word with a strong cross-modal cue and a neutral word weigh alike."""

    def __init__(self, cfg: AlignMambaConfig):
        super().__init__()
        self.layers = nn.ModuleList(ResidualMamba(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.final_norm else nn.Identity()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class SequenceEncoder(nn.Module):
    """Conv1d projection of one modality to the common width: (B, T, d_in) -> (B, T, d)."""

    def __init__(self, d_in: int, d_model: int, kernel: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Conv1d(d_in, d_model, kernel_size=kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        x = self.dropout(x)
        if self.proj.kernel_size[0] == 1:   # a per-step linear map: F.linear on this layout skips two
            return F.linear(x, self.proj.weight[..., 0])   # transposes and oneDNN's conv (3x faster, MOSI text)
        return self.proj(x.transpose(1, 2)).transpose(1, 2)


def masked_mean(x, mask):
    """Mean over valid steps: x (B, L, d), mask (B, L) bool -> (B, d); all-padding rows give 0."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def lengths_to_mask(lengths, max_len: int, batch: int, device) -> torch.Tensor:
    """(B,) true lengths -> (B, max_len) bool; None means every step is valid (MMSA_test)."""
    if lengths is None:
        return torch.ones(batch, max_len, dtype=torch.bool, device=device)
    lengths = torch.as_tensor(lengths, device=device).long().clamp(1, max_len)
    return torch.arange(max_len, device=device).unsqueeze(0) < lengths.unsqueeze(1)


def presence(modality_mask, batch: int, device) -> torch.Tensor:
    """(B, 3) bool: which of text/audio/vision each sample has; None means all of them."""
    if modality_mask is None:
        return torch.ones(batch, 3, dtype=torch.bool, device=device)
    return modality_mask.to(device).bool()


class AlignMamba(nn.Module):
    def __init__(self, cfg: AlignMambaConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.use_bert:
            from transformers import AutoModel  # only for use_bert; a local folder, never a hub id
            self.bert = AutoModel.from_pretrained(cfg.pretrained, local_files_only=True)
            text_dim = self.bert.config.hidden_size
        else:
            self.bert = None
            text_dim = cfg.feature_dims[0]
        in_dims = dict(zip(MODALITIES, (text_dim, *cfg.feature_dims[1:])))
        kernels = dict(zip(MODALITIES, cfg.encoder_kernels))
        self.encoders = nn.ModuleDict(
            {m: SequenceEncoder(in_dims[m], d, kernels[m], cfg.dropout) for m in cfg.modalities})
        # A learned stand-in for a modality that the missing-modality protocol removed.
        self.missing_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m in cfg.modalities})
        # Ours: the learned alignment model behind the monotone / mixture cost, over every source.
        sources = [m for m in cfg.modalities if m != "text"]
        aligns = cfg.fusion == "interleave" and "text" in cfg.modalities and sources and cfg.local_alignment != "none"
        self.aligner = WordAligner(d, {m: in_dims[m] for m in sources}, cfg.ot_cost, cfg.likelihood_prior_init,
                                   band=cfg.aligner_band) \
            if aligns and cfg.ot_cost != "cosine" else None
        # The configured components, each built from the config it takes its own options from.
        self.local_alignment = components.LOCAL_ALIGNMENTS.create(cfg.local_alignment, cfg)
        self.global_alignment = components.GLOBAL_ALIGNMENTS.create(cfg.global_alignment, cfg)
        self.time_proportional = TimeProportional.from_config(cfg)   # where language is missing
        self._diagnostic_plans = None
        n_streams = len(cfg.modalities) if cfg.fusion == "multi_stream" else 1
        self.fusion = nn.ModuleList(MambaStack(cfg) for _ in range(n_streams))
        self.head = nn.Sequential(nn.Linear(d * n_streams, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, 1))

    @classmethod
    def from_mmsa_args(cls, args) -> "AlignMamba":
        return cls(AlignMambaConfig.from_mmsa_args(args))

    # ---- inputs -------------------------------------------------------------------------
    def _text_features(self, text, text_lengths=None):
        """-> features (B, Tl, dt), mask (B, Tl) bool. Which slots are words: ``text_lengths``
        (B,) when given, the count of ones in text_bert's attention mask, which the data loader
        passes; else, for precomputed features, the non-zero rows. BERT's features at [PAD] are not
        zero, so without lengths every slot of such text counts as a word (text_padding.py)."""
        if self.bert is not None:
            ids, attention, segments = text[:, 0].long(), text[:, 1].long(), text[:, 2].long()
            out = self.bert(input_ids=ids, attention_mask=attention, token_type_ids=segments)
            return out.last_hidden_state, attention.bool()
        if text_lengths is not None:
            return text, lengths_to_mask(text_lengths, text.shape[1], text.shape[0], text.device)
        mask = text.abs().sum(-1) > 0
        return text, mask | ~mask.any(1, keepdim=True)

    def _raw_inputs(self, text, audio, vision, audio_lengths, vision_lengths, text_lengths=None):
        """Each used modality's input (B, T_m, d_in), padding zeroed, and its (B, T_m) mask."""
        B, device = audio.shape[0], audio.device
        raw = {"audio": (audio, lengths_to_mask(audio_lengths, audio.shape[1], B, device)),
               "vision": (vision, lengths_to_mask(vision_lengths, vision.shape[1], B, device))}
        if "text" in self.cfg.modalities:
            raw["text"] = self._text_features(text, text_lengths)
        dtype = next(self.parameters()).dtype
        # Zero the padding first: the encoder's conv would otherwise carry padded frames
        # into the last valid steps.
        return {m: (raw[m][0].to(dtype).masked_fill(~raw[m][1][..., None], 0.0), raw[m][1])
                for m in self.cfg.modalities}

    def _encode(self, raw, modality_mask):
        """Encode each used modality to (B, T_m, d) with its (B, T_m) mask and (B,) presence."""
        x0 = next(iter(raw.values()))[0]
        present = presence(modality_mask, x0.shape[0], x0.device)
        encoded = {}
        for m, (x, mask) in raw.items():
            h = self.encoders[m](x)                                             # (B, T_m, d)
            is_present = present[:, MODALITIES.index(m)]                        # (B,)
            h = torch.where(is_present[:, None, None], h, self.missing_embedding[m].expand_as(h))
            encoded[m] = (h, mask, is_present)
        return encoded

    def _drop_modalities(self, modality_mask, batch, device):
        """Training-time modality dropout (ours, not the paper's): (B, 3) presence in which each
        present modality is dropped with probability ``modality_dropout``; a sample left with no
        used modality gets one of its present ones back, chosen uniformly. Without it, a model
        trained on complete data never trains its missing embeddings or the language-less plan."""
        present = presence(modality_mask, batch, device)
        candidates = present & torch.tensor([m in self.cfg.modalities for m in MODALITIES], device=device)
        kept = candidates & (torch.rand(batch, 3, device=device) >= self.cfg.modality_dropout)
        emptied = ~kept.any(dim=1, keepdim=True)                                          # (B, 1)
        rescued = torch.rand(batch, 3, device=device).masked_fill(~candidates, -1.0).argmax(dim=1)
        kept |= emptied & F.one_hot(rescued, 3).bool()
        # unused modalities keep their input flag (the model never reads them)
        return kept | (present & ~candidates)

    # ---- alignment ----------------------------------------------------------------------
    def _word_posteriors(self, raw, enc, present=None, plans_shown=False):
        """The learned cost's aligner on this batch: (log p(frames) (B,), source modality -> log
        posteriors (B, T_m, T_l)), or None for the paper's cosine cost. Once per forward: in
        training it updates the running feature statistics of the frames. Where only the relaxed-OT
        plan reads them (no diagnostic plans), each frame's best word instead."""
        if self.aligner is None:
            return None
        anchor, anchor_mask, _ = enc["text"]
        best_only = not plans_shown and isinstance(self.local_alignment, RelaxedOT)
        return self.aligner({m: raw[m] for m in self.aligner.emissions}, anchor, anchor_mask, present, best_only)

    @staticmethod
    def _plan(align, source, source_mask, anchor, anchor_mask, log_post=None) -> OTAlignment:
        """One source onto the anchor grid with the local alignment ``align``: the encoded
        ``source`` (B, T_m, d) transported to (B, T_l, d). ``log_post``: the learned cost's
        posteriors for that source (see _word_posteriors), None for the cosine cost."""
        scores = WordAligner.scores(log_post) if log_post is not None else None
        return align(source, source_mask, anchor, anchor_mask, scores=scores)

    def _align(self, m, source, source_mask, anchor, anchor_mask, anchor_present, log_post=None):
        """Align one source onto the anchor grid with the configured plan: (B, T_m, d) -> (B, T_l, d).
        Samples without language fall back to the time-proportional plan (nothing to align to)."""
        if not anchor_present.any():
            return self.time_proportional(source, source_mask, None, anchor_mask).aligned
        aligned = self._plan(self.local_alignment, source, source_mask, anchor, anchor_mask, log_post).aligned
        if anchor_present.all():
            return aligned
        fallback = self.time_proportional(source, source_mask, None, anchor_mask).aligned
        return torch.where(anchor_present[:, None, None], aligned, fallback)

    def _shows_plans(self) -> bool:
        """Whether this variant aligns sources onto language, so that it has plans to show."""
        cfg = self.cfg
        return cfg.fusion == "interleave" and "text" in cfg.modalities and len(cfg.modalities) > 1

    @torch.no_grad()
    def _every_plan(self, enc, posts) -> dict[str, dict[str, OTAlignment]]:
        """Diagnostics from one forward's encodings and posteriors: source modality -> every
        registered local alignment ('ot', 'soft_ot', 'none', and any third party's) onto the words."""
        if self._diagnostic_plans is None:   # every registered plan, built once from this config
            self._diagnostic_plans = {kind: components.LOCAL_ALIGNMENTS.create(kind, self.cfg)
                                      for kind in components.LOCAL_ALIGNMENTS.names()}
        anchor, anchor_mask, _ = enc["text"]
        return {m: {kind: self._plan(align, enc[m][0], enc[m][1], anchor, anchor_mask, posts.get(m))
                    for kind, align in self._diagnostic_plans.items()}
                for m in self.cfg.modalities if m != "text"}

    @torch.no_grad()
    def alignment_plans(self, text, audio, vision, audio_lengths=None, vision_lengths=None, text_lengths=None,
                        **_unused) -> dict[str, dict[str, OTAlignment]]:
        """Diagnostics: for each source modality, every registered local alignment onto the language
        steps, computed with the model's current cost (complete data), without the fusion.
        Empty for variants that do not align onto language. ``forward(..., with_plans=True)``
        returns the same plans beside the prediction, from the same pass."""
        if not self._shows_plans():
            return {}
        raw = self._raw_inputs(text, audio, vision, audio_lengths, vision_lengths, text_lengths)
        enc = self._encode(raw, None)
        fitted = self._word_posteriors(raw, enc, plans_shown=True)
        return self._every_plan(enc, fitted[1] if fitted is not None else {})

    # ---- fusion -------------------------------------------------------------------------
    def _fuse_multi_stream(self, enc):
        """One Mamba per modality on its own unaligned sequence, pooled and fused late: (B, n·d)."""
        pooled = [masked_mean(stack(enc[m][0]), enc[m][1]) for stack, m in zip(self.fusion, self.cfg.modalities)]
        return torch.cat(pooled, dim=-1)

    def _fuse_single_stream(self, enc):
        """Modalities concatenated along time, unaligned: (B, ΣT_m, d) -> Mamba -> (B, d)."""
        seq = torch.cat([enc[m][0] for m in self.cfg.modalities], dim=1)
        mask = torch.cat([enc[m][1] for m in self.cfg.modalities], dim=1)
        return masked_mean(self.fusion[0](seq), mask)

    def _fuse_interleave(self, enc, raw, plans_shown=False):
        """The paper's fusion: align audio/vision onto language, interleave, Mamba, pool.
        -> fused (B, d), L_align (scalar), L_plan (scalar), the learned cost's posteriors per source."""
        cfg = self.cfg
        zero = next(iter(enc.values()))[0].new_zeros(())
        # Anchor grid: language if used, else the first used modality's own time axis.
        anchor_name = "text" if "text" in enc else cfg.modalities[0]
        anchor, anchor_mask, anchor_present = enc[anchor_name]
        if anchor_name != "text":  # no language anchor at all: the time-proportional plan
            anchor_present = torch.zeros_like(anchor_present)
        sources = [m for m in cfg.modalities if m != anchor_name]
        present = {m: enc[m][2] & anchor_present for m in sources}    # has both the source and language
        fitted = self._word_posteriors(raw, enc, present, plans_shown) if anchor_name == "text" else None
        posts = fitted[1] if fitted is not None else {}
        aligned = {m: self._align(m, enc[m][0], enc[m][1], anchor, anchor_mask, anchor_present, posts.get(m))
                   for m in sources}
        # L_align and L_plan only matter for training: inference skips the MMD kernel matrices.
        training = self.training and torch.is_grad_enabled() and anchor_name == "text"
        align_loss = plan_loss = zero
        if training and sources:
            align_loss = self.global_alignment(aligned, anchor, anchor_mask, present=present)
        if training and fitted is not None:
            # the alignment model learns from the samples that have language and a source
            plan_loss = self.aligner.nll(fitted[0], {m: raw[m] for m in sources}, present,
                                         torch.stack(list(present.values())).any(0))
        # Time-priority interleaving [a1, v1, l1, a2, …]: stack on a new axis, then flatten.
        order = [m for m in ("audio", "vision", "text") if m in enc]
        aligned[anchor_name] = anchor
        seq = torch.stack([aligned[m] for m in order], dim=2).flatten(1, 2)  # (B, n·Tl, d)
        mask = anchor_mask.repeat_interleave(len(order), dim=1)              # (B, n·Tl)
        return masked_mean(self.fusion[0](seq), mask), align_loss, plan_loss, posts

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None, text_lengths=None,
                modality_mask=None, with_plans: bool = False, **_unused):
        """-> {"M": (B, 1) score, "align_loss", "plan_loss", "Feature_*": pooled features (B, d)};
        ``text_lengths`` (B,): valid tokens per sample ([CLS] words [SEP]; see _text_features);
        ``with_plans`` (complete data): also "plans", every registered local alignment of each
        source from this pass's encodings (alignment diagnostics, see :meth:`alignment_plans`)."""
        cfg = self.cfg
        if self.training and cfg.modality_dropout > 0:
            modality_mask = self._drop_modalities(modality_mask, audio.shape[0], audio.device)
        raw = self._raw_inputs(text, audio, vision, audio_lengths, vision_lengths, text_lengths)
        enc = self._encode(raw, modality_mask)
        features = {f"Feature_{m[0]}": masked_mean(h, mask) for m, (h, mask, _) in enc.items()}
        zero = audio.new_zeros(()).to(features["Feature_" + cfg.modalities[0][0]].dtype)
        align_loss = plan_loss = zero
        posts = {}
        if cfg.fusion == "multi_stream":
            fused = self._fuse_multi_stream(enc)
        elif cfg.fusion == "single_stream":
            fused = self._fuse_single_stream(enc)
        else:
            fused, align_loss, plan_loss, posts = self._fuse_interleave(enc, raw, with_plans)
        features["Feature_f"] = fused
        out = {"M": self.head(fused), "align_loss": align_loss, "plan_loss": plan_loss, **features}  # M: (B, 1)
        if with_plans:
            out["plans"] = self._every_plan(enc, posts) if self._shows_plans() and modality_mask is None else {}
        return out


def AlignMambaForMMSA(args) -> AlignMamba:
    """The `mmsa.models` entry point: MMSA's AMIO calls it with its args dict."""
    return AlignMamba.from_mmsa_args(args)


# Lets the runner check a config before anything is trained or written (host.check_model_args),
# and a user config use every key the model and its trainer read, not only those the JSON lists.
AlignMambaForMMSA.check_args = AlignMambaConfig.from_mmsa_args
AlignMambaForMMSA.config_keys = tuple(f.name for f in fields(AlignMambaConfig)) + (
    "align_weight", "plan_weight", "max_epochs", "early_stop", "grad_clip", "lr_schedule", "ema_decay",
    "learning_rate", "weight_decay", "batch_size", "KeyEval")
# Keys whose value may be of more than one JSON kind (see the field comments of AlignMambaConfig).
AlignMambaForMMSA.config_kinds = {"mmd_sigmas": ("a list", "a number", "a string"),
                                  "global_alignment": ("a string", "a boolean")}


# The paper's Table 3 ablations (plus language-only, the paper's cosine OT cost and our modality
# dropout), as config overrides on top of AlignMamba: one registry entry each, with what it means.
# Without OT, audio/vision still need a length-T_l grid to interleave: the time-proportional plan.
ABLATIONS = Registry("ablation variant")
for _name, _overrides, _meaning in (
    ("alignmamba", {}, "the model as configured"),
    # every departure of docs/method.md §7 set back to the paper's choice at once
    ("paper", {"ot_cost": "cosine", "ot_reduce": "sum", "global_alignment": "mmd"},
     "AlignMamba as published: cosine OT cost, the plan's sum MᵀX, MMD on (docs/method.md §7)"),
    ("paper_ot_cost", {"ot_cost": "cosine"},
     "the paper's OT cost (cosine of encoded features) instead of the learned aligner's"),
    ("wo_local_ot", {"local_alignment": "none"},
     "no local alignment: the time-proportional plan puts audio/vision on the word grid"),
    ("wo_global_mmd", {"global_alignment": "none"}, "no global alignment (no MMD loss)"),
    ("paper_mmd", {"global_alignment": "mmd"},
     "the paper's global alignment: MMD² between aligned audio/vision and text (off by default)"),
    ("single_stream", {"fusion": "single_stream", "global_alignment": "none"},
     "modalities concatenated along time, unaligned, one Mamba"),
    ("multi_stream", {"fusion": "multi_stream", "global_alignment": "none"},
     "one Mamba per modality, pooled and fused late"),
    ("wo_audio", {"modalities": ["text", "vision"]}, "text and vision only"),
    ("wo_video", {"modalities": ["text", "audio"]}, "text and audio only"),
    ("wo_language", {"modalities": ["audio", "vision"]},
     "audio and vision only (vision mapped onto the audio timeline)"),
    ("language_only", {"modalities": ["text"]}, "text only"),
    ("modality_dropout", {"modality_dropout": 0.3},
     "ours: training-time modality dropout 0.3 (robustness to missing modalities)"),
    ("banded", {"aligner_band": 8},
     "ours: the learned aligner's lattice cut to the 8 words around each grid step's time-proportional word"),
    ("full_lattice", {"aligner_band": 0},
     "ours: the learned aligner's full lattice at every length (O(T·T_l)), not the default 128-word band"),
):
    ABLATIONS.register(_name, _overrides, meaning=_meaning)
