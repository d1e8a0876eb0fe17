"""Tests for `mmsa bench` (mmsa_alignmamba.bench): outputs, failure statuses, the Transformer baseline.

No speed assertions: these only check that the benchmark runs and reports what it measured.
Each point runs in a process forked from one forkserver per test session (a few seconds to start).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from mmsa_alignmamba import bench
from mmsa_alignmamba.cli import main as mmsa_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-quick")
    code = mmsa_main(["bench", "--quick", "--threads", "1", "--out", str(out)])
    return code, out


def test_quick_run_writes_every_output(quick_run):
    code, out = quick_run
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    machine = report["machine"]
    for key in ("cpu_model", "threads", "torch", "device", "mamba_backend", "timestamp"):
        assert machine[key] not in (None, "")
    assert machine["device"] == "cpu" and "CPU" in machine["device_label"]
    assert "RANDOM" in report["inputs"]
    points = {(p["model"], p["length"]): p for p in report["points"]}
    assert set(points) == {(m, L) for m in bench.MODELS for L in bench.QUICK_LENGTHS}
    for p in points.values():
        assert p["status"] == "ok", p
        assert p["batch"] == 2 and p["repeats"] == 1
        assert p["time_s"] > 0 and p["cpu_time_s"] > 0 and p["memory_mb"] > 0
        assert p["memory_kind"] == "rss_hwm_delta"
    ratios = {r["length"]: r for r in report["summary"]["ratios"]}
    assert set(ratios) == set(bench.QUICK_LENGTHS)
    assert all(r["time_vs_mult"] > 0 and r["time_vs_transformer"] > 0 for r in ratios.values())
    md = (out / "bench.md").read_text()
    assert "CPU" in md and "RANDOM" in md and "wall / MulT" in md and "CPU / MulT" in md and "per doubling" in md
    for name in ("bench-time.png", "bench-memory.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


@pytest.mark.parametrize("flag, value, status", [("--time-limit", "0.001", "timeout"),
                                                 ("--memory-limit-gb", "0.001", "oom")])
def test_limits_record_a_status_instead_of_crashing(tmp_path, flag, value, status):
    code = mmsa_main(["bench", "--quick", "--models", "mult", "--threads", "1", flag, value,
                      "--out", str(tmp_path)])
    assert code == 0
    points = json.loads((tmp_path / "bench.json").read_text())["points"]
    assert [(p["length"], p["status"]) for p in points] == [(16, status), (32, "skipped")]
    assert "did not complete" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench-time.png").is_file()


def test_transformer_baseline_is_alignmamba_with_transformer_fusion():
    torch.manual_seed(0)
    args = bench.bench_args("transformer", "cpu")
    model = bench.build_bench_model("transformer", args).eval()
    core = model.Model
    stack = core.fusion[0]
    assert isinstance(stack, torch.nn.TransformerEncoder)
    assert len(stack.layers) == core.cfg.n_layers
    layer = stack.layers[0]
    assert layer.self_attn.embed_dim == core.cfg.d_model and layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 4 * core.cfg.d_model
    assert not any("mixer" in name for name, _ in model.named_modules())  # no Mamba left
    reference = bench.build_bench_model("alignmamba", bench.bench_args("alignmamba", "cpu"))
    # same encoders and head as AlignMamba
    assert set(dict(core.named_children())) == set(dict(reference.Model.named_children()))
    inputs, extras = bench.random_inputs("transformer", 8, 2, "cpu")
    with torch.no_grad():
        out = model(*inputs, **extras)
    assert out["M"].shape == (2, 1) and torch.isfinite(out["M"]).all()


def test_the_band_baselines_are_alignmamba_with_their_variants():
    from mmsa_alignmamba.model import ABLATIONS, AlignMambaConfig
    model = bench.build_bench_model("alignmamba_banded", bench.bench_args("alignmamba_banded", "cpu")).eval()
    assert model.Model.aligner.band == ABLATIONS["banded"]["aligner_band"] > 0
    full = bench.build_bench_model("alignmamba_full_lattice", bench.bench_args("alignmamba_full_lattice", "cpu"))
    assert full.Model.aligner.band == 0
    default = bench.build_bench_model("alignmamba", bench.bench_args("alignmamba", "cpu")).Model.aligner.band
    assert default == AlignMambaConfig().aligner_band == 128
    inputs, extras = bench.random_inputs("alignmamba_banded", 40, 2, "cpu")
    with torch.no_grad():
        assert torch.isfinite(model(*inputs, **extras)["M"]).all()


def test_summary_growth_and_ratios():
    points = [{"model": m, "length": L, "status": "ok", "time_s": t * (L / 100) ** k, "memory_mb": mem * L}
              for m, t, k, mem in (("alignmamba", 1.0, 1, 1.0), ("mult", 2.0, 2, 4.0), ("transformer", 1.0, 2, 2.0))
              for L in (100, 200, 400, 800)]
    points.append({"model": "mult", "length": 1600, "status": "oom"})
    s = bench.summarize(points, [100, 200, 400, 800, 1600], list(bench.MODELS))
    assert [g["factor"] for g in s["growth"]["alignmamba"]] == pytest.approx([2.0, 2.0, 2.0])
    assert s["growth_from_400"]["mult"] == pytest.approx(4.0)
    common = s["longest_common_with_mult"]
    assert common["length"] == 800
    assert common["time_vs_mult"] == pytest.approx(8.0 / (2.0 * 64))
    assert common["memory_vs_mult"] == pytest.approx(0.25)
    # lengths that are not doublings are converted to a per-doubling factor
    g = bench.growth_per_doubling([{"model": "x", "length": 100, "status": "ok", "time_s": 1.0},
                                   {"model": "x", "length": 400, "status": "ok", "time_s": 9.0}], "x", [100, 400])
    assert g[0]["factor"] == pytest.approx(3.0)
    assert math.isfinite(g[0]["factor"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_an_input_error(tmp_path, capsys):
    assert mmsa_main(["bench", "--device", "cuda", "--quick", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_new_baseline_is_one_registry_entry(tmp_path, monkeypatch):
    """Register one more entry: ratios, tables and plots include it with nothing else changed."""
    from mmsa_alignmamba.bench import baselines, render
    monkeypatch.setitem(baselines.BASELINES, "wide", bench.Baseline("wide", "Wide fusion", "^", "alignmamba", True))
    monkeypatch.setitem(render.LABELS, "wide", "Wide fusion")
    models = ["alignmamba", "mult", "wide"]
    points = [{"model": m, "length": L, "status": "ok", "time_s": t * L, "cpu_time_s": t * L, "memory_mb": t * L}
              for m, t in (("alignmamba", 1.0), ("mult", 4.0), ("wide", 2.0)) for L in (16, 32)]
    summary = render.summarize(points, [16, 32], models)
    assert [r["time_vs_wide"] for r in summary["ratios"]] == pytest.approx([0.5, 0.5])
    report = {"machine": {"device_label": "CPU (test)", "torch": torch.__version__, "mamba_backend": "ours",
                          "timestamp": "now", "cpu_count": 2, "load_average_at_start": [0.0]},
              "settings": {"device": "cpu", "lengths": [16, 32], "models": models, "batch": 2, "repeats": 1},
              "points": points, "summary": summary}
    md = render.inference_markdown(report)
    assert "wall / Wide fusion" in md and "Wide fusion wall (s)" in md
    render.write_plot(tmp_path / "time.png", report, "time_s", "s", "test")
    assert (tmp_path / "time.png").read_bytes()[:8] == PNG_MAGIC


def test_kernels_section_runs_from_an_installed_wheel(tmp_path):
    """`mmsa bench --kernels` from a wheel install, outside the repository checkout."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(repo)], check=True, capture_output=True)
    (wheel,) = wheels.glob("mmsa_alignmamba-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmsa_alignmamba.bench", "--kernels", "--quick", "--out",
                           str(work / "out")], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    kernels = json.loads((work / "out" / "bench.json").read_text())["kernels"]
    assert kernels["status"] == "ok" and kernels["source"] == "mmsa_alignmamba.bench.kernels"
    where = subprocess.run([sys.executable, "-c", "import mmsa_alignmamba.bench.kernels as k; print(k.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(target), where   # the wheel's copy ran, not the checkout's
    ours = [r for r in kernels["rows"] if r["method"] == "ours"]
    assert ours and all(r["status"] == "ok" and r["seconds"] > 0 for r in ours)


def test_shapes_measures_every_model_at_the_real_shapes(tmp_path):
    """`--shapes`: each registered model (AlignMamba eager and in ONNX Runtime, MulT, the Transformer
    fusion, LF-DNN) at SIMS's real lengths and widths; ratios measured in the same run."""
    pytest.importorskip("onnxruntime")
    code = mmsa_main(["bench", "--shapes", "sims", "--shape-batches", "1", "--repeats", "1", "--threads", "1",
                      "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    points = {p["model"]: p for p in report["shape_points"]}
    assert set(points) == set(bench.BASELINES)
    for p in points.values():
        assert p["status"] == "ok", p
        assert (p["shape"], p["batch"], p["lengths"]) == ("sims", 1, [39, 400, 55]) and p["time_s"] > 0
    (ratios,) = report["shape_summary"]
    assert {"alignmamba_vs_transformer", "alignmamba_vs_mult", "alignmamba_vs_lf_dnn", "onnx_vs_eager"} <= set(ratios)
    md = (tmp_path / "bench.md").read_text()
    assert "SIMS (39, 400, 55)" in md and "ONNX Runtime / eager AlignMamba" in md and "RANDOM" in md


def test_rounds_combine_into_the_median_and_keep_failures():
    from mmsa_alignmamba.bench.inference import combine_rounds
    from mmsa_alignmamba.bench.isolation import OK, TIMEOUT

    def point(model, t, status=OK):
        return {"model": model, "status": status, "time_s": t, "cpu_time_s": 2 * t, "memory_mb": 10 * t}
    rounds = [[point("a", 3.0), point("b", 1.0)], [point("a", 1.0), point("b", 1.0, TIMEOUT)],
              [point("a", 2.0), point("b", 1.0)]]
    a, b = combine_rounds(rounds)
    assert a["time_s"] == 2.0 and a["cpu_time_s"] == 4.0 and a["memory_mb"] == 30.0
    assert a["round_times_s"] == [3.0, 1.0, 2.0]
    assert b["status"] == TIMEOUT
    assert combine_rounds(rounds[:1]) == rounds[0]


def test_alternate_times_models_side_by_side_in_one_process(tmp_path):
    """`--alternate`: at each shape the named models share one process and take turns, so both
    sides of a ratio are measured over the same seconds."""
    code = mmsa_main(["bench", "--shapes", "sims", "--shape-batches", "1", "--models", "lf_dnn", "--repeats", "3",
                      "--threads", "1", "--alternate", "alignmamba", "transformer", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    (record,) = report["alternated"]
    assert record["status"] == "ok" and (record["shape"], record["batch"]) == ("sims", 1)
    for model in ("alignmamba", "transformer"):
        timed = record["alternated"][model]
        assert len(timed["times_s"]) == 3 and timed["time_s"] > 0
        assert timed["time_s"] == pytest.approx(sorted(timed["times_s"])[1], abs=1e-6)   # the median
    md = (tmp_path / "bench.md").read_text()
    assert "Alternated in one process" in md and "AlignMamba / Transformer fusion" in md


def test_alternate_needs_shapes_and_two_models(tmp_path, capsys):
    from conftest import run_cli
    rc, _, err = run_cli(["bench", "--alternate", "alignmamba", "transformer", "--out", tmp_path / "b"], capsys)
    assert rc == 2 and "--alternate needs --shapes" in err
    assert not (tmp_path / "b").exists()


def test_the_training_benchmark_runs_both_models_on_synthetic_data(tmp_path, monkeypatch):
    """`mmsa bench --train`: one capped epoch of AlignMamba and MulT through MMSA's loader on
    generated data, reported as synthetic (it once failed at its first import), every step the
    trainer's own TrainStep (AdamW, clipping, L_plan) and not a loop of its own."""
    from mmsa_alignmamba import trainer
    steps = []
    real = trainer.TrainStep.__call__

    def counted(self, batch, device, where=""):
        steps.append((type(self.optimizer).__name__, self.grad_clip > 0, self.plan_weight, where.split("'")[0]))
        return real(self, batch, device, where)

    monkeypatch.setattr(trainer.TrainStep, "__call__", counted)
    out = tmp_path / "train"
    code = mmsa_main(["bench", "--train", "--quick", "--train-batch", "2", "--train-max-batches", "1",
                      "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    train = report["train"]
    assert "SYNTHETIC" in train["data"] and set(train["models"]) == {"alignmamba", "mult"}
    for result in train["models"].values():
        assert result["batches"] == 1 and result["epoch_s"] > 0
    assert "SYNTHETIC" in (out / "bench.md").read_text()
    # 2 warm-up steps and 1 timed step per model, each the trainer's AdamW step with clipping and μ·L_plan
    assert [s[3] for s in steps] == ["alignmamba"] * 3 + ["mult"] * 3
    assert all(s[0] == "AdamW" and s[1] for s in steps)
    assert steps[0][2] == float(trainer.host.load_config("alignmamba", "mosi").get("plan_weight", 1.0)) > 0


@pytest.mark.parametrize("flag", ["--batch", "--repeats", "--threads", "--train-batch", "--train-max-batches",
                                  "--rounds"])
def test_a_zero_count_is_refused_not_replaced_by_the_default(flag, tmp_path, capsys):
    """0 is a value the user gave: one error line, not silently the default (which `or` would pick)."""
    rc = mmsa_main(["bench", "--quick", flag, "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{flag} must be >= 1, got 0" in err
    assert not (tmp_path / "out").exists()
