"""`mmsa export`: a trained AlignMamba as an ONNX graph, checked in ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .options import ArgumentParser

__all__ = ["main"]


def main(argv) -> int:
    p = ArgumentParser(prog="mmsa export", description="Export a trained AlignMamba to ONNX: inputs text, audio, vision "
                       "(batch, steps, width) and audio_lengths, vision_lengths (batch,); output score (batch,). Batch "
                       "and sequence lengths are dynamic; all modalities are present. Checked in ONNX Runtime against "
                       "PyTorch on random inputs before it is kept.")
    p.add_argument("--checkpoint", required=True, help="an AlignMamba .pth written by `mmsa`")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    p.add_argument("--out", help="file to write (default: the checkpoint's name with .onnx)")
    args = p.parse_args(argv)
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
    except ImportError:
        raise InputError('ONNX export needs the onnx extra: pip install -e ".[onnx]"') from None
    from ..export import export_onnx
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name")
    path, gap = export_onnx(args.checkpoint, out)
    if gap is None:
        print(f"wrote {path} (onnxruntime is not installed: not checked)")
    else:
        print(f"wrote {path}; ONNX Runtime agrees with PyTorch within {gap:.1e} (relative, random inputs, 3 shapes)")
    return 0
