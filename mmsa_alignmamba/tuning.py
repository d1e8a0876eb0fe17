"""`mmsa tune`: hyper-parameter search on Ray Tune, for every registered model.

The search space is the model config's ``debugParams`` (the keys in ``d_paras`` and their
candidate values), the same one MMSA's own ``-t`` tune mode draws from at random. Each trial is
one training through the model's own trainer on MMSA's loaders; after every epoch the trial's best
validation KeyEval so far is reported to Tune with a checkpoint of the weights, so an early-stopping
scheduler (ASHA by default) can end poor trials after a few epochs, and a trial whose worker dies
resumes from its last epoch. Best so far, not the epoch's own score, because that is what the trial
delivers: MMSA keeps the best validation epoch's weights, so one noisy epoch at a rung should not
decide a trial's fate. The dataset travels to the trials through Ray's object store.

Outputs, under ``<res-save-dir>/tune/<model>-<dataset>/``: ``best.json``, the best trial's values
as an MMSA-format config that ``mmsa -c`` accepts (they go to the dataset's ``datasetParams``, which
MMSA reads last), ``trials.csv`` / ``trials.md`` (every trial: its values, best validation score,
epochs run), and Ray Tune's own trial folders.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from .errors import InputError
from .results import lower_is_better
from .safeio import atomic_write_text

__all__ = ["search_space", "run_tune", "default_grace_period", "REDUCTION_FACTOR"]

logger = logging.getLogger("mmsa_alignmamba")

REDUCTION_FACTOR = 3  # ASHA's default: keep one trial in 3 at each rung


def search_space(model: str, dataset: str) -> dict:
    """``debugParams`` of the model's tune config as Ray Tune choices (nested dicts stay nested)."""
    from ray import tune

    from . import host
    args = host.load_config(model, dataset, tune=True, random_choice=False)
    names = list(args.get("d_paras") or [])
    if not names:
        raise InputError(f"{model}'s config has no debugParams.d_paras: nothing to tune")
    space = {}
    for name in names:
        values = args[name]
        if isinstance(values, dict):
            space[name] = {k: tune.choice(list(v)) for k, v in values.items()}
        elif isinstance(values, list):
            space[name] = tune.choice(values)
        else:
            space[name] = values
    return space


def _trial(params: dict, *, model: str, dataset: str, data, config_text: str | None, max_epochs: int,
           cpus: int) -> None:
    """One Tune trial: train with ``params`` over MMSA's config, reporting validation each epoch."""
    from ray import tune

    from . import host
    from .cell_training import EpochBudget, EpochBudgetReached
    torch.set_num_threads(cpus)
    with tempfile.TemporaryDirectory(prefix="mmsa-tune-trial-") as tmp:
        tmp = Path(tmp)
        (tmp / "data.pkl").write_bytes(data)
        config_file = None
        if config_text is not None:
            config_file = tmp / "config.json"
            config_file.write_text(config_text)
        args = host.load_config(model, dataset, config_file)
        args.update(params)
        args.update(host.mmsa_run_args(str(tmp / "data.pkl"), "cpu", str(tmp / "best.pth")),
                    cur_seed=1111, max_epochs=max_epochs)
        host.setup_seed(1111)
        loaders = host.build_dataloaders(args, 0)
        net = host.build_model(args)
        trainer = host.build_trainer(args)
        progress = {"epoch": 0, "best": None}
        restored = tune.get_checkpoint()
        if restored is not None:                      # the trial's worker died: go on from its last epoch
            with restored.as_directory() as d:
                state = torch.load(Path(d) / "model.pth", map_location="cpu", weights_only=True)
                net.load_state_dict(state["weights"])
                progress = {"epoch": int(state["epoch"]), "best": state.get("best_valid")}
        key = args["KeyEval"]
        lower = lower_is_better(key)
        evaluate = trainer.do_test

        def do_test(model_, loader, mode="VAL", **kwargs):
            results = evaluate(model_, loader, mode=mode, **kwargs)
            if str(mode).startswith("VAL"):
                value, best = float(results[key]), progress["best"]
                if best is None or (value < best if lower else value > best):
                    progress["best"] = value
                progress["epoch"] += 1
                with tempfile.TemporaryDirectory() as d:
                    torch.save({"weights": model_.state_dict(), "epoch": progress["epoch"],
                                "best_valid": progress["best"]}, Path(d) / "model.pth")
                    tune.report({"valid": progress["best"], "epoch_valid": value, "epoch": progress["epoch"]},
                                checkpoint=tune.Checkpoint.from_directory(d))
            return results

        trainer.do_test = do_test
        budget = max(1, max_epochs - progress["epoch"])
        try:
            trainer.do_train(net, EpochBudget(loaders, budget).loaders)
        except EpochBudgetReached:
            pass


def default_grace_period(max_epochs: int, reduction_factor: int) -> int:
    """ASHA's first rung when none is given: max_epochs / reduction_factor², at least 1."""
    return max(1, max_epochs // reduction_factor ** 2)


def run_tune(model: str, dataset: str, feature_path: str, out_dir, *, trials: int, max_epochs: int,
             scheduler: str = "asha", cpus_per_run: int = 1, ray_address: str | None = None,
             config_file: str | None = None, seed: int = 0, grace_period: int | None = None,
             reduction_factor: int = REDUCTION_FACTOR) -> dict:
    """Search ``trials`` configurations (random draws from the search space, ``seed``-fixed) with
    at most ``max_epochs`` each; ASHA lets every trial run ``grace_period`` epochs before it may
    stop it, and keeps one in ``reduction_factor`` trials at each rung. -> {"best": {...}, "paths": {...}, "epochs": …}.

    Default grace period: ``max_epochs / reduction_factor²``, so that the rungs are at g, 3g and
    9g ≈ max_epochs (with the default factor 3), as in Hyperband's most aggressive bracket. A
    first rung at epoch 1 or 2 ranks noise: on the benchmark's data every configuration's
    validation loss is still close to the mean predictor's there (`benchmarks/README.md`,
    scale-out)."""
    if grace_period is None:
        grace_period = default_grace_period(max_epochs, reduction_factor)
    import os

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from . import host
    key = host.load_config(model, dataset, config_file)["KeyEval"]
    mode = "min" if lower_is_better(key) else "max"
    started = False
    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False)
        started = True
    out_dir = Path(out_dir).resolve()
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, model=model, dataset=dataset, data=Path(feature_path).read_bytes(),
                                 config_text=Path(config_file).read_text() if config_file else None,
                                 max_epochs=max_epochs, cpus=cpus_per_run),
            {"cpu": cpus_per_run})
        schedule = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=min(grace_period, max_epochs),
                                 reduction_factor=reduction_factor) \
            if scheduler == "asha" else None
        tuner = tune.Tuner(
            trainable, param_space=search_space(model, dataset),
            tune_config=tune.TuneConfig(metric="valid", mode=mode, num_samples=trials, scheduler=schedule,
                                        search_alg=BasicVariantGenerator(random_state=seed)),
            run_config=tune.RunConfig(name=f"{model}-{dataset}-{scheduler}", storage_path=str(out_dir / "ray"),
                                      failure_config=tune.FailureConfig(max_failures=2), verbose=0))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return _write_outputs(grid, model, dataset, key, mode, out_dir, scheduler)


def _write_outputs(grid, model, dataset, key, mode, out_dir: Path, scheduler: str) -> dict:
    import pandas as pd

    from .report import write_csv
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        if history is None or history.empty or "valid" not in history:
            rows.append({**{f"param:{k}": json.dumps(v) for k, v in result.config.items()}, "best_valid": None,
                         "epochs": 0, "status": "error" if result.error else "no report"})
            continue
        best = history["valid"].min() if mode == "min" else history["valid"].max()
        rows.append({**{f"param:{k}": json.dumps(v) for k, v in result.config.items()},
                     "best_valid": float(best), "epochs": int(history["epoch"].max()),
                     "status": "error" if result.error else "ok"})
    table = pd.DataFrame(rows)
    ranked = table.dropna(subset=["best_valid"]).sort_values("best_valid", ascending=(mode == "min"))
    if ranked.empty:
        raise RuntimeError("no trial reported a validation score; see the trial logs under " + str(out_dir / "ray"))
    best_row = ranked.iloc[0]
    best = {k.split(":", 1)[1]: json.loads(v) for k, v in best_row.items() if k.startswith("param:")}
    paths = {"best": out_dir / "best.json", "trials_csv": out_dir / "trials.csv", "trials_md": out_dir / "trials.md"}
    atomic_write_text(paths["best"], json.dumps({model: {"datasetParams": {dataset: best}}}, indent=2) + "\n")
    write_csv(table, paths["trials_csv"])
    head = [c for c in table.columns]
    md = [f"# Tuning {model} on {dataset} ({scheduler}; validation {key}, {'lower' if mode == 'min' else 'higher'} is "
          f"better)", "", f"Best: {best_row['best_valid']:.4f} with {json.dumps(best)}; total epochs run: "
          f"{int(table['epochs'].sum())}.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(str(r[c]) for c in head) + " |" for _, r in ranked.iterrows()]
    atomic_write_text(paths["trials_md"], "\n".join(md) + "\n")
    return {"best": best, "best_valid": float(best_row["best_valid"]), "paths": paths,
            "epochs": int(table["epochs"].sum()), "trials": len(table), "key": key, "mode": mode}
