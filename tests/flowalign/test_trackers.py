"""run.trackers: an offline wandb run receives every iteration's metrics and the sample grids,
tensorboard keeps its folder, and a bad tracker name or a missing package is one sentence."""

import glob
import json
import os
import struct

import pytest

from flowalign.config import load_config
from flowalign.trackers import check_trackers, scalars
from flowalign.trainer import Trainer
from tests.flowalign.test_train import overrides


def wandb_history(path: str) -> list[dict]:
    """The history rows of an offline wandb run file (a LevelDB-style log of protobuf records: a
    7-byte header, 32 KiB blocks, records split into FULL / FIRST / MIDDLE / LAST pieces)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf, rows = open(path, "rb").read(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        buf += data[pos:pos + n]
        pos += n
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def test_offline_wandb_run_receives_metrics_and_grids(tiny_sd3_dir, tmp_path, prompts_file, monkeypatch):
    pytest.importorskip("wandb")  # a dev dependency: installed by `make test`
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = str(tmp_path / "run")
    cfg = load_config(None, overrides(tiny_sd3_dir, out, prompts_file, **{
        "run.trackers": "[tensorboard,wandb]", "run.tracker_project": "flowalign-test"}))
    Trainer(cfg).train()
    runs = glob.glob(os.path.join(out, "wandb", "offline-run-*"))
    assert len(runs) == 1
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f if "reward_mean" in line]
    history = {}
    for row in wandb_history(glob.glob(os.path.join(runs[0], "*.wandb"))[0]):
        history.setdefault(row["_step"], {}).update(row)
    assert [m["iteration"] for m in lines] == [1, 2]
    for m in lines:  # every iteration's metrics, at its iteration
        for key in ("reward_mean", "loss", "time_update", "nfe"):
            assert history[m["iteration"]][key] == pytest.approx(m[key], rel=1e-12, abs=1e-12)
    # the sample grids of iterations 0 and 2 (run.sample_every=2)
    assert history[0]["samples/_type"] == "image-file" and history[2]["samples/_type"] == "image-file"
    assert len(glob.glob(os.path.join(runs[0], "files", "media", "images", "samples_*.png"))) == 2
    with open(os.path.join(out, "wandb_run_id")) as f:
        assert runs[0].endswith(f.read().strip())
    assert os.listdir(os.path.join(out, "tensorboard"))


def test_bad_tracker_names_and_missing_packages_are_one_sentence(monkeypatch):
    with pytest.raises(ValueError, match="run.trackers has 'tensorbored'; use any of"):
        check_trackers(["tensorbored"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"'wandb' but the package 'wandb' is not installed; pip install wandb"):
        check_trackers(["tensorboard", "wandb"])


def test_scalars_keep_numbers_only():
    assert scalars({"iteration": 3, "loss": 0.5, "n": 2, "name": "x", "none": None, "flag": True}) == \
        {"loss": 0.5, "n": 2.0}
