"""AlignMamba's trainer through MMSA's own loaders, model factory and metrics."""
import math

import pytest
import torch

from mmsa_alignmamba import host
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
    args = alignmamba_args(tiny_mosi, tmp_path)
    host.setup_seed(1)
    loaders = host.build_dataloaders(args, 0)
    model = host.build_model(args)
    trainer = host.build_trainer(args)
    history = trainer.do_train(model, loaders, return_epoch_results=True)
    assert len(history["train"]) == 2 and {"TaskLoss", "AlignLoss"} <= set(history["train"][0])
    assert history["train"][0]["AlignLoss"] > 0, "the MMD term must be part of training"
    assert (tmp_path / "best.pth").is_file()
    host.load_checkpoint(model, tmp_path / "best.pth")
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
        args = alignmamba_args(tiny_mosi, tmp_path, align_weight=weight, max_epochs=1,
                               model_save_path=tmp_path / f"w{i}.pth")
        host.setup_seed(1)
        model = host.build_model(args)
        host.build_trainer(args).do_train(model, host.build_dataloaders(args, 0))
        weights.append(torch.load(tmp_path / f"w{i}.pth", weights_only=True))
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
