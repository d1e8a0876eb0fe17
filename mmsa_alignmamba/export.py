"""Export a trained AlignMamba to ONNX, for serving without PyTorch or MMSA.

    mmsa export --checkpoint CK --format onnx --out alignmamba.onnx

The graph takes ``text`` (B, T_l, d_t), ``audio`` (B, T_a, d_a), ``vision`` (B, T_v, d_v),
``audio_lengths``, ``vision_lengths`` and ``text_lengths`` (B,) int64 (the text's valid tokens,
[CLS] words [SEP]: the count of ones in MMSA's attention mask; BERT's [PAD] rows are not zero),
and returns ``score`` (B,): the sentiment score of complete-modality inputs. The batch axis and
all three sequence lengths are dynamic.

The model is traced through its export path (tracing.py): the alignment model's forward-backward
recursions and the selective scan run as ONNX Loops compiled from the same source as the eager
code, on the same weights, so one graph serves every length. Two limits of the graph: modalities
are all present (a missing-modality mask is a run-time branch the trace cannot keep), and text is
precomputed features (use_bert models fine-tune BERT inside; export those with BERT's own tools).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import InputError

__all__ = ["export_onnx", "export_model", "verify_onnx", "ONNX_INPUTS", "example_inputs"]

ONNX_INPUTS = ("text", "audio", "vision", "audio_lengths", "vision_lengths", "text_lengths")
OPSET = 17


class _Scores(nn.Module):
    """AlignMamba as the graph sees it: the six inputs -> scores (B,)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, text, audio, vision, audio_lengths, vision_lengths, text_lengths):
        return self.net(text, audio, vision, audio_lengths, vision_lengths, text_lengths=text_lengths)["M"].squeeze(-1)


def example_inputs(feature_dims, batch: int = 2, lengths=(6, 14, 11), seed: int = 0) -> tuple:
    """Random inputs (text, audio, vision, audio_lengths, vision_lengths, text_lengths) of the
    given widths; the first sample is padded, so that the trace sees lengths shorter than the
    padded axis. Its [PAD] rows of text are not zero, as BERT's are not."""
    generator = torch.Generator().manual_seed(seed)
    t_l, t_a, t_v = lengths
    d_t, d_a, d_v = feature_dims
    text = torch.randn(batch, t_l, d_t, generator=generator)
    audio = torch.randn(batch, t_a, d_a, generator=generator)
    vision = torch.randn(batch, t_v, d_v, generator=generator)
    audio_lengths = torch.full((batch,), t_a, dtype=torch.long)
    vision_lengths = torch.full((batch,), t_v, dtype=torch.long)
    text_lengths = torch.full((batch,), t_l, dtype=torch.long)
    audio_lengths[0], vision_lengths[0], text_lengths[0] = max(1, t_a - 3), max(1, t_v - 2), max(1, t_l - 2)
    return text, audio, vision, audio_lengths, vision_lengths, text_lengths


def export_onnx(checkpoint, out) -> tuple[Path, float | None]:
    """Write the ONNX graph of an AlignMamba checkpoint to ``out`` (atomically) and check it
    against the same model in PyTorch (verify_onnx). -> (out, the largest relative gap, or None
    without onnxruntime)."""
    from .predict import load_model
    loaded = load_model(checkpoint)
    if loaded.info.model != "alignmamba":
        raise InputError(f"ONNX export covers AlignMamba; {checkpoint} is a checkpoint of '{loaded.info.model}'")
    net = getattr(loaded.model, "Model", loaded.model)      # MMSA's AMIO wraps the model
    if net.cfg.use_bert:
        raise InputError("ONNX export needs precomputed text features; this checkpoint fine-tunes BERT (use_bert)")
    path = export_model(net, out)
    return path, verify_onnx(net, path)


def export_model(net: nn.Module, out) -> Path:
    """Write the ONNX graph of an AlignMamba module (``model.AlignMamba``) to ``out``, atomically."""
    # One argmax block per source covers every length the graph will see (see alignment.ot.relaxed_ot_from_scores).
    net.cfg.ot_block_size = 1 << 30
    graph = _Scores(net).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {"text": {0: "batch", 1: "text_steps"}, "audio": {0: "batch", 1: "audio_steps"},
            "vision": {0: "batch", 1: "vision_steps"}, "audio_lengths": {0: "batch"},
            "vision_lengths": {0: "batch"}, "text_lengths": {0: "batch"}, "score": {0: "batch"}}
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer warns about every Python bool it freezes; the frozen ones are the
            # all-modalities-present branches, which is what the graph is for
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example_inputs(net.cfg.feature_dims), str(tmp_path), dynamo=False,
                              input_names=list(ONNX_INPUTS), output_names=["score"], dynamic_axes=axes,
                              opset_version=OPSET)
        tmp_path.replace(out)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out


CHECK_SHAPES = ((1, (9, 31, 17)), (3, (20, 40, 30)), (2, (5, 60, 8)))   # (batch, (T_l, T_a, T_v))


def verify_onnx(net: nn.Module, onnx_path, shapes=CHECK_SHAPES) -> float | None:
    """Largest relative gap between ONNX Runtime and the AlignMamba module ``net`` over random
    inputs of ``shapes`` (none of them the traced example's), or None without onnxruntime.
    Raises if it exceeds 1e-4: a graph that does not compute the model is not kept."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed, (batch, lengths) in enumerate(shapes, start=1):
        inputs = example_inputs(net.cfg.feature_dims, batch, lengths, seed=seed)
        with torch.no_grad():
            expected = _Scores(net)(*inputs).numpy()
        got = session.run(None, {name: x.numpy() for name, x in zip(ONNX_INPUTS, inputs)})[0]
        scale = max(float(abs(expected).max()), 1e-6)
        worst = max(worst, float(abs(got - expected).max()) / scale)
    if worst > 1e-4:
        Path(onnx_path).unlink(missing_ok=True)
        raise RuntimeError(f"the exported graph differs from PyTorch by {worst:.2e} (relative); not kept")
    return worst
