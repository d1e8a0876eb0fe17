"""AlignMamba's trainer through MMSA's own loaders, model factory and metrics."""
import math

import pytest
import torch

from mmsa_alignmamba import checkpoints, host
from mmsa_alignmamba.synthetic import write_synthetic

MOSI_METRICS = {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}


@pytest.fixture(scope="module")
def tiny_mosi(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny_mosi.pkl"
    return write_synthetic(path, like="mosi", size={"train": 32, "valid": 16, "test": 16}, seed=3)


def alignmamba_args(data_path, tmp_path, **overrides):
    args = host.load_config("alignmamba", "mosi")
    args.update(featurePath=str(data_path), custom_feature=None, feature_T="", feature_A="", feature_V="",
                device=torch.device("cpu"), train_mode="regression", model_save_path=tmp_path / "best.pth",
                d_model=16, n_layers=1, d_state=4, batch_size=16, max_epochs=2, early_stop=2, cur_seed=1)
    args.update(overrides)
    return args


def test_train_saves_best_checkpoint_and_test_reports_mmsa_metrics(tiny_mosi, tmp_path):
    args = alignmamba_args(tiny_mosi, tmp_path, global_alignment="mmd")
    host.setup_seed(1)
    loaders = host.build_dataloaders(args, 0)
    model = host.build_model(args)
    trainer = host.build_trainer(args)
    history = trainer.do_train(model, loaders, return_epoch_results=True)
    assert len(history["train"]) == 2 and {"TaskLoss", "AlignLoss"} <= set(history["train"][0])
    assert history["train"][0]["AlignLoss"] > 0, "the MMD term, when on, must be part of training"
    assert (tmp_path / "best.pth").is_file()
    checkpoints.load_weights_into(model, tmp_path / "best.pth")
    results = trainer.do_test(model, loaders["test"], mode="TEST")
    assert MOSI_METRICS <= set(results)
    assert all(math.isfinite(results[k]) for k in MOSI_METRICS)


def test_early_stop_ends_training_before_max_epochs(tiny_mosi, tmp_path):
    # learning rate 0: validation never improves after epoch 1, so early_stop=1 stops at epoch 2.
    args = alignmamba_args(tiny_mosi, tmp_path, max_epochs=10, early_stop=1, learning_rate=0.0)
    host.setup_seed(1)
    history = host.build_trainer(args).do_train(host.build_model(args), host.build_dataloaders(args, 0),
                                                return_epoch_results=True)
    assert len(history["train"]) == 2


def test_the_trainer_steps_through_train_step(tiny_mosi, tmp_path, monkeypatch):
    """The trainer's every step is TrainStep, the one `mmsa bench --train` times."""
    from mmsa_alignmamba import trainer as trainer_module
    calls = []
    real = trainer_module.TrainStep.__call__
    monkeypatch.setattr(trainer_module.TrainStep, "__call__", lambda self, *a, **k: calls.append(k["where"]) or real(self, *a, **k))
    args = alignmamba_args(tiny_mosi, tmp_path, max_epochs=1)
    host.setup_seed(1)
    loaders = host.build_dataloaders(args, 0)
    host.build_trainer(args).do_train(host.build_model(args), loaders)
    assert calls == [f"epoch 1, batch {b}" for b in range(len(loaders["train"]))]


def test_non_finite_loss_stops_training_with_a_clear_error(tiny_mosi, tmp_path):
    args = alignmamba_args(tiny_mosi, tmp_path)
    host.setup_seed(1)
    loaders = host.build_dataloaders(args, 0)
    model = host.build_model(args)
    with torch.no_grad():
        model.Model.head[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss at epoch 1, batch 0"):
        host.build_trainer(args).do_train(model, loaders)
    assert not (tmp_path / "best.pth").exists()


def test_align_weight_zero_trains_on_the_task_loss_only(tiny_mosi, tmp_path):
    """λ enters the loss: with λ = 0 the trained weights differ from λ = 0.1 (same seed)."""
    weights = []
    for i, weight in enumerate((0.0, 0.1)):
        args = alignmamba_args(tiny_mosi, tmp_path, align_weight=weight, global_alignment="mmd", max_epochs=1,
                               model_save_path=tmp_path / f"w{i}.pth")
        host.setup_seed(1)
        model = host.build_model(args)
        host.build_trainer(args).do_train(model, host.build_dataloaders(args, 0))
        weights.append(torch.load(tmp_path / f"w{i}.pth", weights_only=True))
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_plan_accuracy_is_measured_where_the_true_alignment_is_known(tmp_path):
    """On data with true frame->word maps, every evaluation reports each plan's accuracy; the
    time-proportional plan's matches an independent count, and data without maps reports none."""
    import numpy as np

    from mmsa_alignmamba.cell_training import attach_true_alignment
    from mmsa_alignmamba.safeio import safe_pickle_load

    path = write_synthetic(tmp_path / "wl.pkl", like="mosi", size={"train": 16, "valid": 8, "test": 12}, seed=4,
                           task="wordlevel")
    args = alignmamba_args(path, tmp_path, ot_cost="monotone", plan_weight=1.0, max_epochs=1)
    host.setup_seed(1)
    loaders = host.build_dataloaders(args, 0)
    model, trainer = host.build_model(args), host.build_trainer(args)
    assert not any(k.startswith("Plan") for k in trainer.do_test(model, loaders["test"]))
    attach_true_alignment(loaders, path)
    history = trainer.do_train(model, loaders, return_epoch_results=True)
    assert history["train"][0]["PlanLoss"] > 0
    assert {f"Plan{e}_{k}_{m}" for e in ("", "1") for k in ("ot", "soft_ot", "none") for m in ("audio", "vision")} \
        <= set(history["valid"][0])
    results = trainer.do_test(model, loaders["test"], mode="TEST")
    assert all(0.0 <= results[k] <= 1.0 for k in results if k.startswith("Plan"))
    assert all(results[f"Plan1_{k}"] >= results[f"Plan_{k}"] for k in ("ot_audio", "none_vision"))
    test = safe_pickle_load(path)["test"]
    for m in ("audio", "vision"):
        truth = test[f"{m}_token"].astype(int)
        n_tokens = test["text_bert"][:, 1].sum(1)
        plan = np.floor(np.arange(truth.shape[1])[None] * n_tokens[:, None] / test[f"{m}_lengths"][:, None])
        counted = truth >= 0
        assert results[f"Plan_none_{m}"] == pytest.approx(np.mean(plan[counted] == truth[counted]), abs=1e-4)


def test_plan_weight_enters_the_loss(tiny_mosi, tmp_path):
    """μ enters the loss: with the likelihood cost, μ = 0 and μ = 1 train different weights."""
    weights = []
    for i, weight in enumerate((0.0, 1.0)):
        args = alignmamba_args(tiny_mosi, tmp_path, ot_cost="monotone", plan_weight=weight, max_epochs=1,
                               model_save_path=tmp_path / f"p{i}.pth")
        host.setup_seed(1)
        model = host.build_model(args)
        host.build_trainer(args).do_train(model, host.build_dataloaders(args, 0))
        weights.append(torch.load(tmp_path / f"p{i}.pth", weights_only=True))
    assert not torch.equal(weights[0]["Model.aligner.emissions.audio.read.weight"],
                           weights[1]["Model.aligner.emissions.audio.read.weight"])


def test_cosine_schedule_decays_the_learning_rate_and_constant_keeps_it(tiny_mosi, tmp_path):
    rates = {}
    for schedule in ("constant", "cosine"):
        args = alignmamba_args(tiny_mosi, tmp_path, lr_schedule=schedule, max_epochs=3, early_stop=3)
        host.setup_seed(1)
        history = host.build_trainer(args).do_train(host.build_model(args), host.build_dataloaders(args, 0),
                                                    return_epoch_results=True)
        rates[schedule] = [epoch["LR"] for epoch in history["train"]]
    assert rates["constant"] == [1e-3] * 3
    assert rates["cosine"][0] < 1e-3 and rates["cosine"][1] < rates["cosine"][0] and rates["cosine"][2] < 1e-9
    with pytest.raises(ValueError, match="lr_schedule"):
        host.build_trainer(alignmamba_args(tiny_mosi, tmp_path, lr_schedule="step"))


@pytest.mark.parametrize("key, scores, kept", [("MAE", [0.9, 0.5, 0.7], [1, 2]), ("Corr", [0.2, 0.1, 0.4], [1, 3]),
                                               ("Loss", [0.9, 0.5, 0.7], [1, 2])])
def test_the_best_epoch_is_the_lowest_mae_and_loss_and_the_highest_corr(tiny_mosi, tmp_path, monkeypatch, key,
                                                                        scores, kept):
    """KeyEval decides which epoch's checkpoint is kept: MAE and Loss are lower-is-better, as in
    tuning and the reports; Corr (and the accuracies) higher-is-better."""
    from mmsa_alignmamba import checkpoints
    args = alignmamba_args(tiny_mosi, tmp_path, KeyEval=key, max_epochs=3, early_stop=3)
    host.setup_seed(1)
    model, trainer = host.build_model(args), host.build_trainer(args)
    evaluate, validation, epochs, saved = trainer.do_test, iter(scores), [], []

    def do_test(m, loader, mode="VAL", **kw):   # the real evaluation, with a scripted KeyEval score
        results = evaluate(m, loader, mode=mode, **kw)
        if mode.startswith("VAL"):
            results[key] = next(validation)
            epochs.append(mode)
        return results
    monkeypatch.setattr(trainer, "do_test", do_test)
    monkeypatch.setattr(checkpoints, "save", lambda path, state, meta: saved.append(len(epochs)))
    trainer.do_train(model, host.build_dataloaders(args, 0))
    assert saved == kept


def test_evaluation_measures_plans_from_the_same_forward_pass(tmp_path):
    """With the true alignment known, evaluation encodes each batch once: the plans come from the
    prediction's own forward pass, not from a second pass for the diagnostics."""
    from mmsa_alignmamba.cell_training import attach_true_alignment
    path = write_synthetic(tmp_path / "wl.pkl", like="mosi", size={"train": 8, "valid": 8, "test": 12}, seed=4,
                           task="wordlevel")
    args = alignmamba_args(path, tmp_path, batch_size=4)
    host.setup_seed(1)
    loaders = host.build_dataloaders(args, 0)
    attach_true_alignment(loaders, path)
    model, trainer = host.build_model(args), host.build_trainer(args)
    calls = []
    model.Model.encoders["audio"].register_forward_hook(lambda *_: calls.append(1))
    results = trainer.do_test(model, loaders["test"], mode="TEST")
    assert "Plan_ot_audio" in results and "Plan_none_vision" in results
    assert len(calls) == len(loaders["test"]) == 3
