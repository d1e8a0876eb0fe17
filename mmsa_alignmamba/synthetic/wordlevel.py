"""The ``wordlevel`` synthetic family (NOT real data): the label rests on which audio and vision
frames co-occur with which words, and the frames carry a weak signature of the word being
spoken, so a plan that matches frames to words by content can recover the alignment.

What it imitates, and how (all constants fixed in advance, not tuned to any model):

* **Words.** A 2000-word vocabulary with Zipf–Mandelbrot frequencies, ``p(rank r) ∝ (r+2.7)^-0.9``:
  the 100 most frequent are short, neutral function words; the others have 1–4 syllables and,
  with probability 0.5 per content slot, are a sentiment-bearing word whose valence is nearest
  to the utterance polarity ``p + N(0, 1)`` (``p ~ N(0, 0.8²)``); about one word in six carries
  sentiment. ``n`` words per utterance, log-normal around 14, clipped to [2, T_l-2]; token 0 is
  [CLS], token n+1 [SEP].
* **Timing varies freely, as in speech.** Each syllable lasts Gamma(1.8, 0.11 s) (CV 0.75),
  scaled by a per-speaker speaking rate (log-normal, σ 0.2); after each word a pause of
  Gamma(1.5, 0.15 s) follows with probability 0.25; 0.05–0.3 s of silence at both ends. Frames
  are sampled at a fixed rate per modality (a 48-word utterance of average words fills ~90 % of
  T_m; longer ones are cut there, as real features are), so the time-proportional plan is right
  only on average: it sends about 28 % of the frames to their word (71 % within ±1 word).
* **Text** (BERT-like). A word has a 24-d meaning vector (valence along a fixed direction u)
  and an 8-d *form* vector (how it sounds and looks when spoken). Token features are a fixed
  random map of [meaning + valence·u, form] to 768-d, with 20 % of each neighbour's vector
  mixed in (contextual embeddings), a per-utterance context vector and N(0, 0.3²) noise.
* **Audio** (d_a dims, MOSI 5). Each frame is a fixed map (unit-norm directions) of 5 latent
  channels: the voice quality ``a_s`` of the utterance, the tone ``e_k`` put on the word being
  spoken (×2), and a 3-d *phonetic signature* of that word: its form vector through a fixed 3×8
  map that moves from an onset map to a correlated coda map over the word (sounds change within
  a word), ×1.2. Pause and silence frames carry none of them. Then a per-speaker offset
  (σ 0.3), a fixed per-dimension scale and offset, and unit noise correlated over time (AR(1),
  ρ = 0.6), which averages out more slowly than white noise. The signature is weak: a linear
  read-out of a single frame picks the right word among the utterance's ~16 tokens about one
  time in four.
* **Vision** (d_v dims, MOSI 20). Latent channels: face baseline ``v_s`` (visible throughout),
  the expression ``f_k`` during word k (×2), a 3-d *viseme* signature (×1.0: lips show less of
  a word than the voice does), and a 2-d head pose drifting over the utterance; same noise.
* **Label.** ``L = mean_k w_k`` (text), ``A = a_s``, ``V = v_s`` (utterance-level cues) and the
  word-level co-occurrence terms ``X_a = Σ_k w_k·e_k / √n`` (a sentiment word said with a
  sincere or an ironic tone) and ``X_v = Σ_k w_k·f_k / √n`` (with a smile or a frown):

      raw = 0.5 L' + 0.3 A' + 0.3 V' + 0.6 X_a' + 0.6 X_v' + 0.15 N(0,1)    (' = standardized)
      y   = scale · tanh(0.65 raw), on the annotation grid

  ``e_k`` and ``f_k`` are independent across words, so pooled features see X only as noise:
  it takes knowing which frames go with which word.

The true frame→word map of every sample is kept under two extra keys that MMSA's loader
ignores: ``audio_token`` (N, T_a) and ``vision_token`` (N, T_v), int16, the index of the text
token (position in ``text``) of the word being spoken in each frame, −1 where no word is spoken
(pause, silence or padding). The word-aligned variant (``aligned=True``) averages each word's
frames into its token slot, as MMSA's aligned_50.pkl does, and has no map keys.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .common import (TRUE_MAP_KEYS, add_labels, empty_split, quantize, utterance_chunks, word_average,
                     word_counts, write_text)

VERSION = 1          # of this signal model: a bump makes cached files stale
SEED_TAG = 1           # fixed: its data does not depend on which other families exist

# --- fixed constants of the generative model -------------------------------------------
_VOCAB = 2000
_N_FUNCTION = 100                     # most frequent words: one syllable, neutral
_ZIPF_S, _ZIPF_Q = 0.9, 2.7
_POLAR_FRAC = 0.5                    # content slots that hold a sentiment-bearing word
_LAT_MEANING, _LAT_FORM = 24, 8
_SIGMA_P = 0.8
_SYLLABLE_SHAPE, _SYLLABLE_SCALE = 1.8, 0.11   # seconds per syllable
_RATE_SIGMA = 0.2
_PAUSE_PROB, _PAUSE_SHAPE, _PAUSE_SCALE = 0.25, 1.5, 0.15
_EDGE_SILENCE = (0.05, 0.3)
_MEAN_WORD_S = 0.31                   # mean word + pause duration (measured once)
_CONTEXT_MIX = 0.2
_SIGNATURE_DIMS = {"audio": 3, "vision": 6}
_CODA_CORR = 0.8                      # a word's end sounds like its start, only partly
_SIGNATURE_GAIN = {"audio": 2.0, "vision": 1.5}   # per latent channel, against unit noise
_CUE_GAIN = 2.0
_SPEAKER_OFFSET = 0.3
_NOISE_RHO = 0.6
_W_L, _W_A, _W_V, _W_XA, _W_XV, _W_NOISE = 0.5, 0.3, 0.3, 0.6, 0.6, 0.15
_GAIN = 0.65
# approximate standard deviations of L and X_a = X_v over the sample distribution (measured
# once with this generator on 8000 MOSI-like samples; part of the model definition, never refit)
_STD_L, _STD_X = 0.21, 0.53


def structure(rng: np.random.Generator, p: dict[str, Any]) -> dict[str, np.ndarray]:
    """The fixed random parts: vocabulary, embeddings and projections (per preset and seed)."""
    d_t, d_a, d_v = p["feature_dims"]
    ranks = np.arange(_VOCAB)
    freq = (ranks + _ZIPF_Q) ** -_ZIPF_S
    syllables = np.where(ranks < _N_FUNCTION, 1, 1 + rng.poisson(0.8, _VOCAB).clip(0, 3))
    content = ranks >= _N_FUNCTION
    polar = content & (rng.random(_VOCAB) < 0.5)
    valence = np.where(polar, rng.normal(0.0, 1.3, _VOCAB), 0.0)
    neutral_ids = np.flatnonzero(~polar)
    polar_ids = np.flatnonzero(polar)
    order = np.argsort(valence[polar_ids], kind="stable")
    u = rng.normal(size=_LAT_MEANING)
    u /= np.linalg.norm(u)
    meaning = rng.normal(0.0, 1.0 / math.sqrt(_LAT_MEANING), (_VOCAB, _LAT_MEANING))
    meaning -= np.outer(meaning @ u, u)  # valence lives on u only
    lat_t = _LAT_MEANING + _LAT_FORM
    st = {
        "syllables": syllables,
        "valence": valence,
        "neutral_ids": neutral_ids,
        "neutral_cdf": np.cumsum(freq[neutral_ids]) / freq[neutral_ids].sum(),
        "polar_sorted_ids": polar_ids[order],
        "polar_sorted_val": valence[polar_ids][order],
        "u": u,
        "meaning": meaning,
        "form": rng.normal(0.0, 1.0 / math.sqrt(_LAT_FORM), (_VOCAB, _LAT_FORM)),
        "cls": rng.normal(0.0, 1.0 / math.sqrt(lat_t), lat_t),
        "sep": rng.normal(0.0, 1.0 / math.sqrt(lat_t), lat_t),
        "P_t": rng.normal(0.0, 1.0, (lat_t, d_t)).astype(np.float32),
    }
    for m, d_m, n_lat in (("audio", d_a, 2 + _SIGNATURE_DIMS["audio"]),
                          ("vision", d_v, 4 + _SIGNATURE_DIMS["vision"])):
        k = _SIGNATURE_DIMS[m]
        # onset and coda maps of the form vector (unit-variance signature channels)
        st[f"G0_{m}"] = rng.normal(0.0, 1.0, (_LAT_FORM, k))
        st[f"G1_{m}"] = _CODA_CORR * st[f"G0_{m}"] + math.sqrt(1 - _CODA_CORR ** 2) * rng.normal(0.0, 1.0, (_LAT_FORM, k))
        # latent channel -> feature directions of unit norm: whatever d_m, the best linear read-out
        # of a channel sees it against unit noise, as in 5-d audio
        P = rng.normal(0.0, 1.0, (n_lat, d_m))
        st[f"P_{m}"] = P / np.linalg.norm(P, axis=1, keepdims=True)
        st[f"scale_{m}"] = np.exp(rng.normal(0.0, 0.3, d_m))
        st[f"off_{m}"] = rng.normal(0.0, 0.5, d_m)
    return st


def _timeline(rng, st, word_ids, wmask):
    """Word onsets and ends in seconds (B, W) and the utterance duration (B,)."""
    B, W = word_ids.shape
    n_syl = st["syllables"][word_ids]
    # a word's duration: the sum of its syllables' Gamma durations = Gamma(shape·n_syl)
    dur = rng.gamma(_SYLLABLE_SHAPE * n_syl, _SYLLABLE_SCALE)
    dur *= np.exp(rng.normal(0.0, _RATE_SIGMA, (B, 1)))       # speaking rate
    pause = np.where(rng.random((B, W)) < _PAUSE_PROB, rng.gamma(_PAUSE_SHAPE, _PAUSE_SCALE, (B, W)), 0.0)
    dur, pause = np.where(wmask, dur, 0.0), np.where(wmask, pause, 0.0)
    lead = rng.uniform(*_EDGE_SILENCE, B)
    tail = rng.uniform(*_EDGE_SILENCE, B)
    ends_with_pause = np.cumsum(dur + pause, 1) + lead[:, None]
    onset = ends_with_pause - dur - pause
    end = onset + dur
    last = np.take_along_axis(end, (wmask.sum(1) - 1)[:, None], 1)[:, 0]
    return onset, end, last + tail


def _frame_words(onset, end, n_words, total, rate, T_max):
    """Frame -> word index (B, T_max), −1 in pauses, silence and padding; phase within the
    word in [0, 1); true lengths (B,)."""
    B, W = onset.shape
    t = (np.arange(T_max) + 0.5) / rate                                       # (T,)
    t_true = np.clip(np.ceil(total * rate), 2, T_max).astype(np.int64)
    k = (onset[:, None, :] <= t[None, :, None]).sum(-1) - 1                   # (B, T) last onset before t
    k_safe = k.clip(0, W - 1)
    on = np.take_along_axis(onset, k_safe, 1)
    en = np.take_along_axis(end, k_safe, 1)
    speaking = (k >= 0) & (k < n_words[:, None]) & (t[None, :] < en)
    speaking &= np.arange(T_max)[None, :] < t_true[:, None]
    phase = np.where(speaking, (t[None, :] - on) / np.maximum(en - on, 1e-6), 0.0)
    return np.where(speaking, k, -1), phase, t_true


def _ar1_noise(rng, shape):
    """Unit-variance noise correlated over time (axis 1) with coefficient _NOISE_RHO."""
    from scipy.signal import lfilter  # scipy comes with scikit-learn; only this family needs it
    eps = rng.standard_normal(shape)
    eps[:, 0] /= math.sqrt(1.0 - _NOISE_RHO ** 2)   # start in the stationary distribution
    return lfilter([math.sqrt(1.0 - _NOISE_RHO ** 2)], [1.0, -_NOISE_RHO], eps, axis=1)


def _frames(rng, st, m, words, phase, form, channels, t_true):
    """Frame features (B, T, d_m) float32, zero after the true length.

    ``channels`` (B, T, c) are the modality's non-signature latent channels per frame; the
    signature of the word being spoken is appended (zero outside words)."""
    B, T = words.shape
    speaking = words >= 0
    wf = np.take_along_axis(form, words.clip(0)[:, :, None], 1)                # (B, T, form)
    sig = ((1.0 - phase)[..., None] * (wf @ st[f"G0_{m}"]) + phase[..., None] * (wf @ st[f"G1_{m}"]))
    sig *= _SIGNATURE_GAIN[m] * speaking[..., None]   # form rows have norm ~1: unit-variance channels
    latent = np.concatenate([channels, sig], -1)
    d_m = st[f"P_{m}"].shape[1]
    x = latent @ st[f"P_{m}"]
    x += _SPEAKER_OFFSET * rng.standard_normal((B, 1, d_m))
    x += _ar1_noise(rng, (B, T, d_m))
    x = x * st[f"scale_{m}"] + st[f"off_{m}"]
    x[np.arange(T)[None, :] >= t_true[:, None]] = 0.0
    return x.astype(np.float32)


def make_split(rng, st, p, split, n, aligned, keep_latents):
    T_l, T_a_u, T_v_u = p["seq_lens"]["unaligned"]
    W = T_l - 2
    scale, step = p["label_scale"], p["label_step"]
    # frame rates: a W-word utterance of average words and pauses fills ~90 % of T_m
    rates = {"audio": 0.9 * T_a_u / (W * _MEAN_WORD_S), "vision": 0.9 * T_v_u / (W * _MEAN_WORD_S)}

    out = empty_split(n, p, aligned)
    lengths = {m: np.zeros(n, np.int64) for m in ("audio", "vision")}
    maps = {m: np.full((n, T), -1, np.int16) for m, T in (("audio", T_a_u), ("vision", T_v_u))}
    labels = np.zeros(n, np.float32)
    uni = {m: np.zeros(n, np.float32) for m in "TAV"}
    raw_text = np.empty(n, dtype=object)
    lat_keep: dict[str, list] = {k: [] for k in ("n_words", "w", "e", "f", "L", "A", "V", "X_a", "X_v")}
    vocab_words = [f"w{i:04d}" for i in range(_VOCAB)]
    lat_t = _LAT_MEANING + _LAT_FORM

    for s0, sl, B, pol, a_s, v_s in utterance_chunks(rng, n, _SIGMA_P):
        # ---- utterance-level latents and words
        ctx = rng.normal(0.0, 0.5 / math.sqrt(lat_t), (B, lat_t))
        n_words, wmask = word_counts(rng, B, W)                                 # (B,), (B, W)
        neutral_pick = st["neutral_ids"][np.searchsorted(st["neutral_cdf"], rng.random((B, W)) * st["neutral_cdf"][-1])
                                         .clip(0, len(st["neutral_ids"]) - 1)]
        target = pol[:, None] + rng.normal(0.0, 1.0, (B, W))
        pos = np.clip(np.searchsorted(st["polar_sorted_val"], target), 0, len(st["polar_sorted_val"]) - 1)
        is_polar = (rng.random((B, W)) < _POLAR_FRAC) & (neutral_pick >= _N_FUNCTION)
        word_ids = np.where(is_polar, st["polar_sorted_ids"][pos], neutral_pick)
        word_ids[~wmask] = 0
        w = np.where(wmask, st["valence"][word_ids], 0.0)
        e = np.where(wmask, rng.normal(0.0, 1.0, (B, W)), 0.0)                  # tone on word k
        f = np.where(wmask, rng.normal(0.0, 1.0, (B, W)), 0.0)                  # expression on word k

        # ---- text: [CLS] words [SEP] pad, contextual mixing between neighbouring words
        z = np.zeros((B, T_l, lat_t))
        z[:, 1:W + 1, :_LAT_MEANING] = st["meaning"][word_ids] + w[:, :, None] * st["u"]
        z[:, 1:W + 1, _LAT_MEANING:] = st["form"][word_ids]
        z[:, 1:W + 1] *= wmask[:, :, None]
        z[:, 0] = st["cls"]
        z[np.arange(B), n_words + 1] = st["sep"]
        tok_mask = np.arange(T_l)[None, :] <= (n_words + 1)[:, None]            # (B, T_l)
        mixed = z.copy()
        mixed[:, 1:] += _CONTEXT_MIX * z[:, :-1]
        mixed[:, :-1] += _CONTEXT_MIX * z[:, 1:]
        mixed += ctx[:, None, :]
        write_text(out, sl, s0, rng, mixed, tok_mask, st["P_t"], word_ids, wmask, n_words, vocab_words, raw_text)
        del z, mixed

        # ---- one timeline, sampled by each modality at its own rate
        onset, end, total = _timeline(rng, st, word_ids, wmask)
        form = st["form"][word_ids]                                             # (B, W, form)
        frames = {}
        for m, T_max in (("audio", T_a_u), ("vision", T_v_u)):
            words, phase, t_true = _frame_words(onset, end, n_words, total, rates[m], T_max)
            speaking = words >= 0
            k = words.clip(0)
            if m == "audio":  # voice quality and tone exist only while speaking
                channels = np.stack([a_s[:, None] * speaking,
                                     _CUE_GAIN * np.take_along_axis(e, k, 1) * speaking], -1)
            else:             # the face is always visible; expression belongs to the word
                drift = np.cumsum(rng.normal(0.0, 0.05, (B, T_max, 2)), 1)
                channels = np.concatenate([
                    np.broadcast_to(v_s[:, None, None], (B, T_max, 1)),
                    (_CUE_GAIN * np.take_along_axis(f, k, 1) * speaking)[..., None],
                    drift], -1)
            frames[m] = _frames(rng, st, m, words, phase, form, channels, t_true)
            maps[m][sl] = np.where(words >= 0, words + 1, -1)
            lengths[m][sl] = t_true
            if aligned:
                out[m][sl] = word_average(words, frames[m], T_l)
            else:
                out[m][sl] = frames[m]
        del frames

        # ---- labels
        nf = n_words.astype(np.float64)
        L = w.sum(1) / nf
        X_a = (w * e).sum(1) / np.sqrt(nf)
        X_v = (w * f).sum(1) / np.sqrt(nf)
        raw = (_W_L * L / _STD_L + _W_A * a_s + _W_V * v_s + _W_XA * X_a / _STD_X + _W_XV * X_v / _STD_X
               + _W_NOISE * rng.normal(0.0, 1.0, B))
        labels[sl] = quantize(scale * np.tanh(_GAIN * raw), scale, step)
        if p["unimodal_labels"]:
            noise = 0.3 * rng.normal(0.0, 1.0, (3, B))
            uni["T"][sl] = quantize(scale * np.tanh(_GAIN * (L / _STD_L + noise[0])), scale, step)
            uni["A"][sl] = quantize(scale * np.tanh(_GAIN * (a_s + X_a / _STD_X + noise[1])), scale, step)
            uni["V"][sl] = quantize(scale * np.tanh(_GAIN * (v_s + X_v / _STD_X + noise[2])), scale, step)
        if keep_latents:
            for key, val in (("n_words", n_words), ("w", w), ("e", e), ("f", f), ("L", L), ("A", a_s),
                             ("V", v_s), ("X_a", X_a), ("X_v", X_v)):
                lat_keep[key].append(val)

    if not aligned:
        out["audio_lengths"] = lengths["audio"]
        out["vision_lengths"] = lengths["vision"]
        for m, key in TRUE_MAP_KEYS.items():
            out[key] = maps[m]
    add_labels(out, labels, uni, p, split, raw_text)
    latents = None
    if keep_latents:
        latents = {k: np.concatenate(v) for k, v in lat_keep.items()}
        latents.update({key: maps[m] for m, key in TRUE_MAP_KEYS.items()})
    return out, latents


def oracle(data, like: str) -> dict:
    """The oracle ladder on the test split, kept in the sidecar (:mod:`.oracle`)."""
    from .oracle import oracle_ladder
    return oracle_ladder(data, like)
