"""AlignMamba as a module: shapes, masks, ablations, missing modalities, BERT text, checkpoints."""
import pytest
import torch

from mmsa_alignmamba.model import ABLATIONS, AlignMamba, AlignMambaConfig

B, TL, TA, TV = 3, 12, 30, 40
DIMS = (768, 5, 20)


def small_config(**overrides):
    return AlignMambaConfig(feature_dims=DIMS, d_model=16, n_layers=1, d_state=4, dropout=0.0, **overrides)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(B, TL, DIMS[0], generator=g)
    text[2, 9:] = 0  # padded words
    return dict(text=text, audio=torch.randn(B, TA, DIMS[1], generator=g),
                vision=torch.randn(B, TV, DIMS[2], generator=g),
                audio_lengths=torch.tensor([30, 10, 3]), vision_lengths=torch.tensor([40, 15, 2]))


@pytest.mark.parametrize("variant", list(ABLATIONS))
def test_every_variant_runs_forward_and_backward(variant, batch):
    torch.manual_seed(0)
    model = AlignMamba(small_config(**ABLATIONS[variant]))
    out = model(**batch)
    assert out["M"].shape == (B, 1)
    (out["M"].sum() + out["align_loss"]).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if ABLATIONS[variant].get("global_alignment", AlignMambaConfig.global_alignment) != "none" and "text" in ABLATIONS[variant].get("modalities", "text") \
            and len(ABLATIONS[variant].get("modalities", "tav")) > 1:
        assert out["align_loss"] > 0
    else:
        assert out["align_loss"] == 0


def test_padding_does_not_change_the_prediction(batch):
    """Values written into padded audio/vision frames must not reach the output."""
    torch.manual_seed(0)
    model = AlignMamba(small_config()).eval()
    before = model(**batch)["M"]
    noisy = dict(batch, audio=batch["audio"].clone(), vision=batch["vision"].clone())
    noisy["audio"][1, 10:] = 1e3
    noisy["vision"][2, 2:] = -1e3
    after = model(**noisy)["M"]
    torch.testing.assert_close(before, after)


def test_forward_without_lengths_matches_full_lengths(batch):
    """MMSA_test calls model(text, audio, vision): every step counts as valid."""
    torch.manual_seed(0)
    model = AlignMamba(small_config()).eval()
    full = dict(batch, audio_lengths=torch.full((B,), TA), vision_lengths=torch.full((B,), TV))
    torch.testing.assert_close(model(batch["text"], batch["audio"], batch["vision"])["M"], model(**full)["M"])


def test_interleaving_order_is_audio_vision_text():
    """Time-priority interleaving: token 3j is audio j, 3j+1 vision j, 3j+2 language j."""
    torch.manual_seed(0)
    model = AlignMamba(small_config(local_alignment="none", global_alignment=False)).eval()
    seen = {}
    model.fusion[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("seq", args[0]))
    text = torch.randn(1, 4, DIMS[0])
    audio, vision = torch.randn(1, 4, DIMS[1]), torch.randn(1, 4, DIMS[2])
    model(text, audio, vision)
    seq = seen["seq"][0]
    enc = {m: model.encoders[m](x)[0] for m, x in (("text", text), ("audio", audio), ("vision", vision))}
    # Equal lengths: the time-proportional plan is the identity (rescaled by T_l / T_m = 1).
    torch.testing.assert_close(seq[0::3], enc["audio"])
    torch.testing.assert_close(seq[1::3], enc["vision"])
    torch.testing.assert_close(seq[2::3], enc["text"])


def test_missing_modalities_use_learned_embedding_and_language_fallback(batch):
    torch.manual_seed(0)
    model = AlignMamba(small_config()).eval()
    present = torch.tensor([[False, True, True], [True, False, True], [True, True, True]])
    out = model(**batch, modality_mask=present)
    assert torch.isfinite(out["M"]).all()
    # A sample's prediction must not depend on the features of a modality marked missing.
    changed = dict(batch, text=batch["text"].clone(), audio=batch["audio"].clone())
    changed["text"][0] = torch.randn(TL, DIMS[0])
    changed["audio"][1] = torch.randn(TA, DIMS[1])
    out2 = model(**changed, modality_mask=present)
    torch.testing.assert_close(out["M"][:2], out2["M"][:2])


def test_language_missing_for_every_sample_drops_mmd(batch):
    torch.manual_seed(0)
    model = AlignMamba(small_config(global_alignment="mmd"))
    present = torch.tensor([[False, True, True]] * B)
    assert model(**batch, modality_mask=present)["align_loss"] == 0


def test_state_dict_round_trips_through_weights_only_load(tmp_path, batch):
    torch.manual_seed(0)
    model = AlignMamba(small_config()).eval()
    path = tmp_path / "alignmamba.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    other = AlignMamba(small_config()).eval()
    assert not torch.allclose(other(**batch)["M"], model(**batch)["M"])
    other.load_state_dict(torch.load(path, weights_only=True), strict=True)
    torch.testing.assert_close(other(**batch)["M"], model(**batch)["M"])


def test_mamba_parameter_names_follow_mamba_ssm():
    model = AlignMamba(small_config())
    names = {n.rsplit(".", 1)[0].split("mixer.")[-1] for n, _ in model.named_parameters() if ".mixer." in n}
    assert {"in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"} <= names
    assert any(n.endswith("mixer.A_log") for n, _ in model.named_parameters())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown local_alignment 'sinkhorn'; registered: none, ot, soft_ot"):
        AlignMambaConfig(local_alignment="sinkhorn")
    with pytest.raises(ValueError, match="unknown global_alignment 'wasserstein'; registered: mmd, none"):
        AlignMambaConfig(global_alignment="wasserstein")
    assert AlignMambaConfig(global_alignment=False).global_alignment == "none"   # the first release's switch
    for bad in (dict(fusion="late"), dict(modalities=("text", "smell")),
                dict(dropout=1.5), dict(d_model=0), dict(use_bert=True)):
        with pytest.raises(ValueError, match="AlignMambaConfig"):
            AlignMambaConfig(**bad)


def test_from_mmsa_args_picks_known_keys():
    args = {"feature_dims": [768, 74, 35], "d_model": 8, "n_layers": 1, "batch_size": 64, "model_name": "alignmamba"}
    cfg = AlignMambaConfig.from_mmsa_args(args)
    assert cfg.feature_dims == (768, 74, 35) and cfg.d_model == 8 and cfg.n_layers == 1


def test_use_bert_fine_tunes_a_local_bert(tmp_path):
    from transformers import BertConfig, BertModel
    bert_dir = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(bert_dir)
    torch.manual_seed(0)
    model = AlignMamba(small_config(use_bert=True, pretrained=str(bert_dir)))
    ids = torch.randint(103, 200, (B, TL)).float()
    ids[:, 0], ids[:, -1] = 101, 102
    text = torch.stack([ids, torch.ones(B, TL), torch.zeros(B, TL)], dim=1)  # (B, 3, T): MMSA's text_bert
    out = model(text, torch.randn(B, TA, 5), torch.randn(B, TV, 20))
    assert out["M"].shape == (B, 1)
    out["M"].sum().backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_modality_dropout_statistics_and_guarantees():
    """Each present modality is dropped at the configured rate; a sample left with none gets one
    back; a modality missing on input is never brought back."""
    torch.manual_seed(0)
    model = AlignMamba(small_config(modality_dropout=0.3, modalities=("text", "vision")))
    n = 20_000
    given = torch.ones(n, 3, dtype=torch.bool)
    given[: n // 2, 0] = False  # half the samples arrive without language
    kept = model._drop_modalities(given, n, "cpu")
    assert not (kept & ~given).any()
    assert (kept[:, [0, 2]]).any(dim=1).all()  # audio is unused: it does not count as kept
    # two used modalities: a drop sticks unless both were dropped (0.09) and it was the one
    # given back (half of those): 0.3 - 0.09 / 2
    full = kept[n // 2:]
    for m in (0, 2):
        assert abs((~full[:, m]).float().mean().item() - (0.3 - 0.045)) < 0.015
    assert kept[: n // 2, 2].all()  # vision alone: always given back
    assert kept[:, 1].all()  # audio is unused: its input flag passes through


def test_modality_dropout_only_while_training(batch):
    torch.manual_seed(0)
    plain = AlignMamba(small_config())
    dropping = AlignMamba(small_config(modality_dropout=0.9))
    dropping.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for model in (plain, dropping):  # distinct missing embeddings make a drop visible
            for i, p in enumerate(model.missing_embedding.values()):
                p.fill_(float(i + 1))
    plain.eval(), dropping.eval()
    torch.testing.assert_close(plain(**batch)["M"], dropping(**batch)["M"])
    plain.train(), dropping.train()
    torch.manual_seed(1)
    train_plain = plain(**batch)["M"]
    torch.manual_seed(1)
    assert not torch.allclose(train_plain, dropping(**batch)["M"])


def test_modality_dropout_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="modality_dropout"):
        small_config(modality_dropout=1.0)


# ------------------------------------------------------------------ the learned costs (ours)
@pytest.mark.parametrize("cost", ["monotone", "mixture"])
def test_learned_cost_trains_its_alignment_model_and_only_in_training(cost, batch):
    torch.manual_seed(0)
    model = AlignMamba(small_config(ot_cost=cost, global_alignment="mmd"))
    out = model(**batch)
    assert out["plan_loss"] > 0 and out["align_loss"] > 0
    out["plan_loss"].backward()
    for emission in model.aligner.emissions.values():
        assert emission.read.weight.grad.abs().sum() > 0 and emission.log_spread.grad.abs().sum() > 0
    assert model.encoders["text"].proj.weight.grad.abs().sum() > 0   # the words' features learn too
    model.eval()
    assert model(**batch)["plan_loss"] == 0
    # padding still cannot reach the prediction (the cost reads raw frames)
    noisy = dict(batch, audio=batch["audio"].clone())
    noisy["audio"][1, 10:] = 1e3
    torch.testing.assert_close(model(**batch)["M"], model(**noisy)["M"])


def test_paper_cost_has_no_alignment_model_and_no_plan_loss(batch):
    torch.manual_seed(0)
    model = AlignMamba(small_config(ot_cost="cosine"))
    assert model.aligner is None and model(**batch)["plan_loss"] == 0
    assert AlignMamba(small_config(ot_cost="monotone", local_alignment="none")).aligner is None


@pytest.mark.parametrize("cost", ["cosine", "monotone", "mixture"])
def test_alignment_plans_are_the_models_plans(cost, batch):
    """The diagnostics show the plan the forward pass uses: transporting the encoded audio with
    the reported 'ot' plan reproduces the interleaved audio tokens."""
    torch.manual_seed(0)
    model = AlignMamba(small_config(ot_cost=cost, ot_reduce="mean")).eval()
    seen = {}
    model.fusion[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("seq", args[0]))
    model(**batch)
    plans = model.alignment_plans(**batch)
    assert set(plans) == {"audio", "vision"} and all(set(p) == {"ot", "soft_ot", "none"} for p in plans.values())
    torch.testing.assert_close(seen["seq"][:, 0::3], plans["audio"]["ot"].aligned)
    torch.testing.assert_close(seen["seq"][:, 1::3], plans["vision"]["ot"].aligned)
    assert AlignMamba(small_config(**ABLATIONS["single_stream"])).alignment_plans(**batch) == {}


def test_model_runs_in_float64(batch):
    """No hidden float32 casts: the whole model works in double precision."""
    torch.manual_seed(0)
    model = AlignMamba(small_config(ot_cost="monotone")).double()
    out = model(**{k: v.double() if v.is_floating_point() else v for k, v in batch.items()})
    assert out["M"].dtype == torch.float64
    (out["M"].sum() + out["plan_loss"] + out["align_loss"]).backward()


def test_config_rejects_bad_alignment_options():
    for bad in (dict(ot_cost="euclid"), dict(ot_reduce="max"), dict(ot_position_prior=-1.0),
                dict(likelihood_prior_init=0.0), dict(ot_temperature=0.0)):
        with pytest.raises(ValueError, match="AlignMambaConfig"):
            AlignMambaConfig(**bad)


def test_every_ablation_has_a_meaning():
    meanings = {name: entry.meta.get("meaning") for name, entry in ABLATIONS.entries().items()}
    assert list(meanings) == list(ABLATIONS) and all(meanings.values()), meanings


def test_the_paper_variant_sets_every_departure_back_at_once(batch):
    """`paper` is AlignMamba as published: the cosine OT cost (no learned aligner, no L_plan), the
    plan's sum MᵀX and the MMD loss, where the defaults differ on all three."""
    default, paper = AlignMambaConfig(), AlignMambaConfig(**ABLATIONS["paper"])
    assert (default.ot_cost, default.ot_reduce, default.global_alignment) == ("monotone", "mean", "none")
    assert (paper.ot_cost, paper.ot_reduce, paper.global_alignment) == ("cosine", "sum", "mmd")
    torch.manual_seed(0)
    model = AlignMamba(small_config(**ABLATIONS["paper"])).train()
    out = model(**batch)
    assert model.aligner is None and out["plan_loss"] == 0 and out["align_loss"] > 0
