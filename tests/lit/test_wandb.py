"""W&B comparison: the compared knobs as flat config keys and tags, the online detection for any server,
and an offline run whose files hold the flat keys and the curves image."""
from __future__ import annotations

import json
import struct

import pytest

from conftest import make_cfg, tiny_cfg
from vqformer.lit.runner import train
from vqformer.lit.wandb_run import flat_config, knob_tags, wandb_mode


def test_flat_keys_and_tags_come_from_the_composed_config():
    cfg = make_cfg("codebook=s512", "block=l256", "model.head_type=mqa", "model.kernel=eager", "model.agg_cache=false",
                   "seed=3", "name=sweep_s", "sequence_len=512", "update_len=256", "model.attn_type=full")
    flat = flat_config(cfg)
    assert flat == {"experiment": "sweep_s", "task": "lm", "data_name": "wiki_sample", "n_code": 512,
                    "block_len": 256, "attn_type": "full", "head_type": "mqa", "kernel": "eager",
                    "agg_cache": False, "sequence_len": 512, "update_len": 256, "seed": 3}
    assert knob_tags(flat) == ["S=512", "L=256", "attn=full", "head=mqa", "kernel=eager", "agg_cache=false",
                               "data=wiki_sample", "seed=3"]


def test_flat_keys_skip_knobs_a_model_does_not_have():
    cfg = make_cfg("experiment=longvq/lra_image")
    flat = flat_config(cfg)
    assert flat["n_code"] == cfg.model.n_code and flat["task"] == "classify" and flat["experiment"] == cfg.name
    assert "head_type" not in flat and "kernel" not in flat   # the LongVQ classifier has neither knob
    assert "S=" + str(cfg.model.n_code) in knob_tags(flat) and not any(t.startswith("head=") for t in knob_tags(flat))


def netrc_home(tmp_path, host: str):
    (tmp_path / ".netrc").write_text(f"machine {host}\n  login user\n  password {'x' * 40}\n")
    return {"HOME": str(tmp_path)}


def test_self_hosted_server_with_a_netrc_login_runs_online(tmp_path):
    env = netrc_home(tmp_path, "wandb.example.org")
    assert wandb_mode("auto", {**env, "WANDB_BASE_URL": "https://wandb.example.org"}) == "online"
    assert wandb_mode("auto", {**env, "WANDB_BASE_URL": "http://wandb.example.org:8080/"}) == "online"
    # a login for the self-hosted server is no login for api.wandb.ai, and the other way round
    assert wandb_mode("auto", env) == "offline"
    cloud = netrc_home(tmp_path, "api.wandb.ai")
    assert wandb_mode("auto", cloud) == "online"
    assert wandb_mode("auto", {**cloud, "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"


def test_host_from_wandb_login_settings_and_api_key(tmp_path):
    env = netrc_home(tmp_path, "wandb.example.org")
    settings = tmp_path / ".config" / "wandb"
    settings.mkdir(parents=True)
    (settings / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    assert wandb_mode("auto", env) == "online"      # `wandb login --host https://wandb.example.org`
    empty = {"HOME": str(tmp_path / "nobody")}
    assert wandb_mode("auto", empty) == "offline"
    assert wandb_mode("auto", {**empty, "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": "https://wandb.example.org"}) == "online"
    assert wandb_mode("auto", {**empty, "WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode("disabled", {**env, "WANDB_BASE_URL": "https://wandb.example.org"}) == "disabled"


def test_offline_run_holds_the_flat_keys_tags_and_curves(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = tiny_cfg(tmp_path, "logger=wandb", "trainer.max_steps=4", "trainer.val_check_interval=2", "ckpt_every=2",
                   "tags=[mine]")
    train(cfg, tmp_path / "run")
    runs = list((tmp_path / "run").rglob("offline-run-*"))
    assert len(runs) == 1
    run = offline_run_record(next(runs[0].glob("*.wandb")))
    logged = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {k: logged[k] for k in ("n_code", "block_len", "attn_type", "head_type", "kernel", "agg_cache", "data_name",
                                    "sequence_len", "update_len", "seed", "experiment")} == \
        {"n_code": 16, "block_len": 16, "attn_type": "vq", "head_type": "shga", "kernel": "chunked",
         "agg_cache": True, "data_name": "generated", "sequence_len": 64, "update_len": 32, "seed": 0,
         "experiment": "default"}
    assert logged["model"]["n_code"] == 16          # the nested config is still there
    assert list(run.tags) == ["mine", "S=16", "L=16", "attn=vq", "head=shga", "kernel=chunked", "agg_cache=true",
                              "data=generated", "seed=0"]
    assert list(runs[0].rglob("media/images/plots/curves*.png")), "the curves image was not logged as W&B media"
    assert (tmp_path / "run" / "plots" / "curves.png").stat().st_size > 1000


def offline_run_records(path):
    """The protobuf records of an offline ``run-*.wandb`` file (W&B's LevelDB-style log: 7-byte file header,
    32 KiB blocks of chunks, each with a 7-byte header crc32 / length / type; types 1 full, 2 first, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, buf, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # block trailer too short for a header: skipped by the writer
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def offline_run_record(path):
    return next(r.run for r in offline_run_records(path) if r.WhichOneof("record_type") == "run")
