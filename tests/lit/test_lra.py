"""LRA data (docs/longvq.md §4): the ListOps generator and evaluator, the classification data module
(exact resume), and ``task=classify`` end to end through ``vqformer.train``'s runner."""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch

from conftest import make_cfg
from vqformer.config import ConfigError
from vqformer.data.lra import listops
from vqformer.data.lra.datamodule import LRADataModule
from vqformer.lit.runner import DONE, train

pytestmark = pytest.mark.usefixtures("single_thread")
GEN = {"seed": 0, "n_train": 48, "n_val": 16, "n_test": 16, "min_len": 10, "max_len": 60}


def eval_tree(t):
    """Independent evaluator on the nested-pair tree itself."""
    if isinstance(t, int):
        return t
    args, node = [], t[0]                   # t = (((op, a1), a2) ..., "]")
    while not isinstance(node, str):
        args.append(eval_tree(node[1]))
        node = node[0]
    args.reverse()
    return {"[MIN": min(args), "[MAX": max(args), "[MED": int(np.median(args)), "[SM": sum(args) % 10}[node]


def test_serialization_and_evaluation_follow_lra():
    tree = ((("[MAX", 2), 9), "]")
    assert listops.to_string(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert listops.evaluate_tokens(listops.source_tokens(listops.to_string(tree))) == 9
    assert listops.evaluate_tokens("[MED 1 2 3 4 ]".split()) == 2            # int(median(1,2,3,4) = 2.5)
    assert listops.evaluate_tokens("[SM 9 8 [MIN 7 5 ] ]".split()) == 2      # (9 + 8 + 5) mod 10
    assert listops.evaluate_tokens("[MIN 3 [MAX 1 8 ] ]".split()) == 3
    with pytest.raises(ValueError, match="unbalanced"):
        listops.evaluate_tokens("[MIN 3 4".split())


def test_random_trees_evaluate_like_the_tree_and_count_their_length():
    rng = random.Random(1)
    for _ in range(300):
        tree, length = listops.generate_tree(rng, 1, 6, 5)
        toks = listops.source_tokens(listops.to_string(tree))
        assert len(toks) == length
        assert listops.evaluate_tokens(toks) == eval_tree(tree)


def test_tree_shape_statistics():
    """Root leaf with probability 0.75; operator nodes have 2..max_args children; operators nest at most max_depth - 1 deep."""
    rng = random.Random(0)
    trees = [listops.generate_tree(rng, 1, 3, 4)[0] for _ in range(4000)]
    leaf = np.mean([isinstance(t, int) for t in trees])
    assert abs(leaf - 0.75) < 0.03

    def depth(t):
        if isinstance(t, int):
            return 0
        node, d = t[0], 0
        while not isinstance(node, str):
            d = max(d, depth(node[1]))
            node = node[0]
        return d + 1
    assert max(depth(t) for t in trees) == 2        # the root has depth 1 and depth max_depth is a leaf


def test_generator_is_deterministic_unique_and_in_range():
    a, b = listops.generate(**GEN), listops.generate(**GEN)
    assert a == b
    assert listops.generate(**{**GEN, "seed": 1}) != a
    rows = a["train"] + a["val"] + a["test"]
    assert [len(a[s]) for s in ("train", "val", "test")] == [48, 16, 16]
    assert len({src for src, _ in rows}) == len(rows)
    assert all(10 < len(listops.source_tokens(src)) < 60 for src, _ in rows)
    assert {label for _, label in rows} <= set(range(10))


def test_prepare_is_cached_and_round_trips(tmp_path):
    out = listops.prepare_generated(tmp_path, **GEN)
    path = out / "basic_train.tsv"
    mtime = path.stat().st_mtime_ns
    assert listops.prepare_generated(tmp_path, **GEN) == out and path.stat().st_mtime_ns == mtime
    assert not list(out.glob(".*tmp"))
    src, labels = listops.read_tsv(path)
    assert list(zip(src, labels)) == listops.generate(**GEN)["train"]
    tokens, lengths = listops.encode(src, 32)
    assert tokens.dtype == np.uint8 and tokens.shape == (48, 32)
    first = listops.source_tokens(src[0])
    assert [listops.VOCAB[t] for t in first][:32] == tokens[0, :lengths[0]].tolist()
    assert (tokens[lengths < 32][:, -1] == 0).all()


def datamodule(tmp_path, **kw):
    args = dict(task="listops", root=str(tmp_path), batch_size=4, generator=GEN, max_len=64, seed=3)
    args.update(kw)
    dm = LRADataModule(**args)
    dm.prepare_data()
    dm.setup()
    return dm


def test_datamodule_batches(tmp_path):
    dm = datamodule(tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 64) and batch["inputs"].dtype == torch.int64
    assert batch["mask"].dtype == torch.bool
    assert (batch["inputs"][~batch["mask"]] == 0).all() and (batch["inputs"][batch["mask"]] > 0).all()
    val = next(iter(dm.val_dataloader()))
    src, labels = listops.read_tsv(listops.generated_dir(tmp_path, **GEN) / "basic_val.tsv")
    assert val["label"].tolist() == labels[:4]


def test_train_loader_resumes_exactly(tmp_path):
    dm = datamodule(tmp_path)
    loader = dm.train_dataloader()
    it = iter(loader)
    seen = [next(it)["label"] for _ in range(5)]
    state = loader.state_dict()
    rest = [b["label"] for b in it]
    fresh = datamodule(tmp_path).train_dataloader()
    fresh.load_state_dict(state)
    torch.testing.assert_close(torch.stack([b["label"] for b in fresh]), torch.stack(rest))
    assert len(seen) + len(rest) == 12


@pytest.mark.parametrize("kw, key", [({"task": "nope"}, "data.task"), ({"batch_size": 0}, "data.batch_size"),
                                     ({"source": "web"}, "data.source"), ({"task": "text", "source": "generated"},
                                                                          "data.source"), ({"max_len": -1}, "data.max_len")])
def test_bad_data_arguments_name_the_key(tmp_path, kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        LRADataModule(**{**dict(task="listops", root=str(tmp_path), batch_size=4), **kw})


TINY = ["experiment=longvq/lra_listops", "logger=csv", *[f"data.generator.{k}={v}" for k, v in GEN.items()],
        "data.max_len=64", "data.batch_size=8", "model.n_layer=1", "model.d_model=16", "model.d_ffn=32",
        "model.z_dim=8", "model.v_dim=16", "model.n_dim=4", "codebook=s16", "block=l16", "optim.warmup_steps=2",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.val_check_interval=100"]


def tiny_cfg(tmp_path, *extra):
    return make_cfg(*TINY, f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}", *extra)


class Crash(L.Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.at:
            raise RuntimeError("simulated preemption")


def test_classify_runs_end_to_end_and_resumes_exactly(tmp_path):
    args = ["trainer.max_steps=8", "ckpt_every=4"]
    straight = train(tiny_cfg(tmp_path, *args), tmp_path / "straight")
    assert {"val/acc", "val/loss"} <= set(straight) and straight["step"] == 8
    assert (tmp_path / "straight" / DONE).exists()
    cfg = tiny_cfg(tmp_path, *args)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        train(cfg, tmp_path / "resumed", extra_callbacks=[Crash(at=4)])
    resumed = train(cfg, tmp_path / "resumed")
    assert resumed["val/loss"] == pytest.approx(straight["val/loss"], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("override, key", [
    (["model.n_classes=3"], "model.n_classes"), (["model.vocab_size=4"], "model.vocab_size"),
    (["model.embed=real"], "model.embed"), (["model.attn_fn=cosine"], "model.attn_fn"),
    (["+model.mem_len=64"], "mem_len"), (["optim.schedule=step"], "optim.schedule"),
    (["model=mega", "model.max_len=128"], "model.max_len"), (["data.task=nope"], "data.task"),
])
def test_bad_classify_config_fails_naming_the_key(tmp_path, override, key):
    cfg = make_cfg("experiment=longvq/lra_listops", *override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_classifier_is_scored_on_test_and_judged_against_its_lra_row(tmp_path):
    """`python -m vqformer.evaluate` on a finished MEGA run writes its test accuracy (no bits per byte), and the
    lra results family judges it against MEGA's ListOps row: a run of 4 updates is not held to the band."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vqformer.results import lra

    run = tmp_path / "mega"
    train(tiny_cfg(tmp_path, "model=mega", "model.max_len=64", "trainer.max_steps=4", "ckpt_every=4"), run)
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.run([sys.executable, "-m", "vqformer.evaluate", f"run_dir={run}", "split=test"],
                          env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "eval_test.json").read_text())["metrics"]
    assert 0 <= metrics["test/acc"] <= 1 and f"test/acc {metrics['test/acc']:.4f}" in proc.stdout
    assert lra.verdicts(run) == ["lra/listops/mega: not judged: 4 of the full run's 90,000 updates"]
