"""Components by name through entry points: this package's own, a third party's added with no
code change here, and one clear error for a name nobody registered."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

import mmsa_alignmamba  # noqa: F401
from conftest import run_cli as _main
from mmsa_alignmamba import components, host
from mmsa_alignmamba.registry import UnknownNameError

TOY_MODULE = textwrap.dedent('''
    """A third party's components: a local alignment and a missing-modality protocol."""
    import numpy as np
    import torch

    from mmsa_alignmamba.alignment import time_proportional
    from mmsa_alignmamba.missing import MissingProtocol

    CALLS = {"alignment": 0, "protocol": 0}

    def last_word_alignment(cfg):
        """Every frame to the last word of its sample (the time-proportional plan, reversed)."""
        def align(source, source_mask, anchor, anchor_mask, *, scores=None):
            CALLS["alignment"] += 1
            return time_proportional(source.flip(1), source_mask.flip(1), anchor_mask,
                                     rescale=cfg.ot_rescale, reduce=cfg.ot_reduce)
        return align

    class AudioOffProtocol(MissingProtocol):
        """``audio_off``: audio missing in every sample (the rate is ignored)."""
        name = "audio_off"

        def _apply(self, out, split, batch_index, epoch, num_batches):
            CALLS["protocol"] += 1
            out["audio"] = torch.zeros_like(out["audio"])
            present = np.ones((out["audio"].shape[0], 3), dtype=bool)
            present[:, 1] = False
            out["modality_mask"] = torch.from_numpy(present)
''')

ENTRY_POINTS = textwrap.dedent("""\
    [mmsa.local_alignments]
    last_word = toy_components:last_word_alignment

    [mmsa.missing_protocols]
    audio_off = toy_components:AudioOffProtocol
    """)


@pytest.fixture
def toy_components(tmp_path, monkeypatch):
    """-> install(declared): put the toy distribution on sys.path, with or without its entry points."""
    def install(declared: bool):
        site = tmp_path / "site"
        (site / "toy_components").mkdir(parents=True)
        (site / "toy_components" / "__init__.py").write_text(TOY_MODULE)
        info = site / "toy_components-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-components\nVersion: 0.1\n")
        if declared:
            (info / "entry_points.txt").write_text(ENTRY_POINTS)
        monkeypatch.syspath_prepend(str(site))
        components.refresh()
        return site
    yield install
    sys.modules.pop("toy_components", None)
    components.refresh()



def _config(tmp_path: Path, **alignmamba) -> Path:
    """An MMSA-format config: MMSA's own plus AlignMamba's section with ``alignmamba`` overrides."""
    config = json.loads(host.mmsa_default_config().read_text())
    config["alignmamba"] = json.loads(host.plugins()["alignmamba"].config_path.read_text())["alignmamba"]
    config["alignmamba"]["commonParams"].update(alignmamba)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_own_components_are_registered_with_this_distribution():
    for kind, expected in (("local_alignment", {"ot", "soft_ot", "none"}), ("global_alignment", {"mmd", "none"}),
                           ("missing_protocol", {"imder", "sample", "frame"})):
        found = components.KINDS[kind].entries()
        assert expected <= set(found), kind
        assert {found[name].distribution for name in expected} == {"mmsa-alignmamba"}
    with pytest.raises(UnknownNameError, match="unknown local_alignment 'nope'; registered: none, ot"):
        components.LOCAL_ALIGNMENTS.get("nope")


def test_components_command_lists_them_with_their_distribution(toy_components, capsys):
    toy_components(True)
    rc, out, _ = _main(["components"], capsys)
    assert rc == 0
    rows = {tuple(line.split()[:2]): line.split()[2] for line in out.splitlines() if line.strip()}
    assert rows[("local_alignment", "ot")] == "mmsa-alignmamba"
    assert rows[("local_alignment", "last_word")] == "toy-components"
    assert rows[("missing_protocol", "audio_off")] == "toy-components"


def test_third_party_alignment_and_protocol_are_used_without_code_change(toy_components, tmp_path, short_pkl,
                                                                          capsys):
    toy_components(True)
    import toy_components as toy
    out = tmp_path / "out"
    rc, _, err = _main(["-m", "alignmamba", "-d", "mosi", "--feature-path", short_pkl, "-s", "1", "--epochs", "1",
                        "-c", _config(tmp_path, local_alignment="last_word", ot_cost="cosine"),
                        "--missing-protocol", "audio_off", "--missing-rates", "0.5",
                        "--res-save-dir", out / "r", "--model-save-dir", out / "m", "--log-dir", out / "l"], capsys)
    assert rc == 0, err
    assert toy.CALLS["alignment"] > 0, "the model did not use the registered alignment"
    assert toy.CALLS["protocol"] > 0, "the sweep did not use the registered protocol"
    (cell,) = (out / "r" / "cells").rglob("*.json")
    assert json.loads(cell.read_text())["cell"]["protocol"] == "audio_off"


def test_undeclared_components_are_one_error_line(toy_components, tmp_path, short_pkl, capsys):
    toy_components(False)   # the same code, without its entry points
    out = tmp_path / "out"
    dirs = ["--res-save-dir", out / "r", "--model-save-dir", out / "m", "--log-dir", out / "l"]
    rc, _, err = _main(["-m", "alignmamba", "-d", "mosi", "--feature-path", short_pkl, "-s", "1",
                        "--missing-protocol", "audio_off", "--missing-rates", "0.5", *dirs], capsys)
    assert rc == 2 and "audio_off" in err and "imder" in err
    rc, _, err = _main(["-m", "alignmamba", "-d", "mosi", "--feature-path", short_pkl, "-s", "1", "--epochs", "1",
                        "-c", _config(tmp_path, local_alignment="last_word"), *dirs], capsys)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    (line,) = lines
    assert "unknown local_alignment 'last_word'; registered: none, ot, soft_ot" in line
    assert not out.exists(), "a refused config must leave no output folders"


def test_the_config_validates_its_component_names_without_installed_entry_points(monkeypatch):
    """The built-in components are known from this package's own table, not from its installed
    metadata: a source checkout that was never pip-installed (no entry points) still validates and
    builds every built-in, and still refuses an unknown name in one line."""
    from importlib import metadata

    from mmsa_alignmamba.model import AlignMamba, AlignMambaConfig
    monkeypatch.setattr(metadata, "entry_points", lambda **_: [])
    components.refresh()
    try:
        for local in ("ot", "soft_ot", "none"):
            for global_ in ("mmd", "none"):
                AlignMamba(AlignMambaConfig(d_model=8, n_layers=1, d_state=4, local_alignment=local,
                                            global_alignment=global_))
        with pytest.raises(UnknownNameError, match="unknown local_alignment 'sinkhorn'; registered: none, ot, soft_ot"):
            AlignMambaConfig(local_alignment="sinkhorn")
    finally:
        monkeypatch.undo()
        components.refresh()


def test_sinkhorn_is_reachable_by_config():
    """soft_ot takes ot_sinkhorn_iters from the config: the plan's columns balance only with it."""
    import torch

    from mmsa_alignmamba.model import AlignMambaConfig
    g = torch.Generator().manual_seed(0)
    source, anchor = torch.randn(1, 30, 8, generator=g), torch.randn(1, 6, 8, generator=g)
    masks = torch.ones(1, 30, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)
    columns = {}
    for iters in (0, 200):
        cfg = AlignMambaConfig(local_alignment="soft_ot", ot_cost="cosine", ot_temperature=0.5, ot_sinkhorn_iters=iters)
        plan = components.LOCAL_ALIGNMENTS.create("soft_ot", cfg)(source, masks[0], anchor, masks[1]).plan
        columns[iters] = (plan.sum(1) - 1 / 6).abs().max().item()
    assert columns[200] < 1e-4 < columns[0]
