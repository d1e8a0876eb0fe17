"""`mmsa predict`: predictions of a trained model (any registered model) on an MMSA-format pickle."""
from __future__ import annotations

from pathlib import Path

from .. import host
from ..errors import InputError, check_at_least
from .options import ArgumentParser, setup_logging

__all__ = ["main"]


def main(argv) -> int:
    from ..datasets import MODALITIES
    from ..predict import SPLIT_CHOICES, load_model, predict_file
    from ..results import metrics_line
    from ..safeio import atomic_write_text
    p = ArgumentParser(prog="mmsa predict", description="Predict with a trained model (any registered model) on an "
                       "MMSA-format pickle whose labels are optional. Writes one CSV row per sample: id, split, score, "
                       "the class under MMSA's thresholds for the dataset, and the label where the data has one; "
                       "with labels, MMSA's metrics are printed too.")
    p.add_argument("--checkpoint", required=True, help="a .pth written by `mmsa` (or, with -m and -d, a bare state dict)")
    p.add_argument("--feature-path", required=True, help="MMSA-format pickle with the split(s) to predict")
    p.add_argument("--split", default="test", choices=SPLIT_CHOICES, help="split to predict (default test; all = every split)")
    p.add_argument("--absent", nargs="+", default=[], choices=MODALITIES,
                   help="treat these modalities as missing (the missing-modality protocols' modality mask)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("-m", "--model", type=str.lower, help="the model the checkpoint must be of (needed for a bare state dict)")
    p.add_argument("-d", "--dataset", type=str.lower, choices=host.DATASETS,
                   help="dataset whose thresholds classify the scores (default: the checkpoint's)")
    p.add_argument("-b", "--batch-size", type=int, help="default: the model's training batch size")
    p.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2), help="0 errors, 1 info, 2 debug")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    check_at_least(("--batch-size", args.batch_size, 1))
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name")
    feature_path = Path(args.feature_path)
    if not feature_path.is_file():
        raise InputError(f"data file not found: {feature_path}")
    from .. import checkpoints
    checkpoint = checkpoints.load(args.checkpoint)
    feature_dims = None
    if checkpoint.meta is None and args.model and args.dataset:   # a bare state dict: widths from the data
        from ..predict import data_feature_dims
        feature_dims = data_feature_dims(feature_path, args.model, args.dataset)
    loaded = load_model(checkpoint, model=args.model, dataset=args.dataset, feature_dims=feature_dims)
    text, metrics = predict_file(loaded, feature_path, [args.split], args.absent, args.batch_size)
    atomic_write_text(out, text)
    rows = text.count("\n") - 1
    for split, values in metrics.items():
        if values is not None:
            print(f"{split}: {metrics_line(values)}")
    print(f"wrote {rows} prediction(s) of {loaded.info.model} to {out}")
    return 0
