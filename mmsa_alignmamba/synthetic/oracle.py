"""The oracle ladder of a synthetic set with known word alignment: what simple linear read-outs
reach on the test split, given less or more of the truth. Tables made on such data show these
rows beside the models, so a model's number can be read against them.

* ``text_linear``: ridge regression on the mean text token.
* ``pooled_linear``: ridge on the mean text token, mean audio frame and mean vision frame.
* ``aligned_ceiling``: ridge on the pooled features plus word-level co-occurrence features
  built with the TRUE frame→word map: for each word, its text score (the text-only ridge
  applied to that token) times the mean of its audio (vision) frames, summed over words and
  divided by √n. What a model given the true alignment gets with one bilinear step.

Every ridge is fitted on the train split (regularisation by leave-one-out over a fixed grid)
and scored on the test split with MMSA's own regression metrics for the dataset.
"""
from __future__ import annotations

import numpy as np

from ..text_padding import valid_slots
from .common import TRUE_MAP_KEYS

#: order in which tables list the rungs, with their display names
RUNGS = {"text_linear": "oracle: text-only linear",
         "pooled_linear": "oracle: pooled all-modality linear",
         "aligned_ceiling": "oracle: true-alignment ceiling"}
_ALPHAS = np.logspace(-2, 6, 17)


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, T, d), (N, T) bool -> (N, d) mean over the valid steps (0 where none)."""
    w = mask.astype(np.float64)
    return np.einsum("ntd,nt->nd", x, w) / np.maximum(w.sum(1), 1.0)[:, None]


def _frame_mask(part, m):
    lengths = part.get(f"{m}_lengths")
    T = part[m].shape[1]
    if lengths is None:
        return np.abs(part[m]).sum(-1) > 0
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def _word_means(part, m) -> tuple[np.ndarray, np.ndarray]:
    """Per text token, the mean of the frames the TRUE map gives it: (N, T_l, d) and (N, T_l) bool."""
    x = part[m]
    n, T_l = part["text"].shape[:2]
    key = TRUE_MAP_KEYS[m]
    if key not in part:  # word-aligned file: frames already sit in their token's slot
        has = np.abs(x).sum(-1) > 0
        return x.astype(np.float64), has
    tokens = np.asarray(part[key]).astype(np.int64)              # (N, T_m), -1 = no word
    valid = tokens >= 0
    flat = (np.arange(n)[:, None] * T_l + tokens)[valid]
    sums = np.zeros((n * T_l, x.shape[2]))
    np.add.at(sums, flat, x[valid])
    counts = np.bincount(flat, minlength=n * T_l).astype(np.float64)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.reshape(n, T_l, -1), (counts > 0).reshape(n, T_l)


def _features(part, text_coef):
    text_mask = valid_slots(part, "synthetic oracle")   # the attention mask: BERT-style [PAD] rows are not zero
    pooled = {"text": _masked_mean(part["text"], text_mask)}
    for m in ("audio", "vision"):
        pooled[m] = _masked_mean(part[m], _frame_mask(part, m))
    feats = {"text_linear": pooled["text"],
             "pooled_linear": np.concatenate([pooled["text"], pooled["audio"], pooled["vision"]], 1)}
    if text_coef is not None:
        score = part["text"] @ text_coef                                        # (N, T_l) per-token text score
        n_words = np.maximum(text_mask.sum(1) - 2, 1).astype(np.float64)       # minus [CLS], [SEP]
        cross = []
        for m in ("audio", "vision"):
            means, has = _word_means(part, m)
            cross.append(np.einsum("nt,ntd->nd", score * has, means) / np.sqrt(n_words)[:, None])
        feats["aligned_ceiling"] = np.concatenate(
            [(pooled["text"] @ text_coef)[:, None], pooled["audio"], pooled["vision"], *cross], 1)
    return feats


def oracle_ladder(data: dict, like: str) -> dict[str, dict[str, float]]:
    """``{rung: {metric: value}}`` on ``data['test']`` (MMSA's metrics, fractions as MMSA gives them)."""
    import torch
    from sklearn.linear_model import RidgeCV

    from ..host import metrics_for
    from .common import preset

    train, test = data["train"], data["test"]
    y_train = np.asarray(train["regression_labels"], np.float64).reshape(-1)
    y_test = np.asarray(test["regression_labels"], np.float64).reshape(-1)
    scale = preset(like)["label_scale"]
    text_only = RidgeCV(alphas=_ALPHAS).fit(_features(train, None)["text_linear"], y_train)
    f_train, f_test = _features(train, text_only.coef_), _features(test, text_only.coef_)
    metrics = metrics_for(like)
    ladder = {}
    for rung in RUNGS:
        model = RidgeCV(alphas=_ALPHAS).fit(f_train[rung], y_train)
        pred = np.clip(model.predict(f_test[rung]), -scale, scale)
        result = metrics(torch.as_tensor(pred, dtype=torch.float32).view(-1, 1),
                         torch.as_tensor(y_test, dtype=torch.float32).view(-1, 1))
        ladder[rung] = {k: round(float(v), 4) for k, v in result.items()}
    return ladder
