"""The recall task end to end: an MQAR experiment trains for a few steps through the runner, logs accuracy per
test segment, loads back from its checkpoint; bad recall configs fail naming the key before any work."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import make_cfg, progress_lines
from vqformer.config import ConfigError
from vqformer.lit.recall_module import RecallModule
from vqformer.lit.runner import DONE, train

TINY = ["model.d_model=16", "model.d_k=8", "model.d_ff=32", "data.batch_size=8", "data.eval_batch_size=8",
        "data.train_segments=[{input_seq_len:32,num_kv_pairs:2,num_examples:64}]",
        "data.test_segments=[{input_seq_len:32,num_kv_pairs:2,num_examples:16},"
        "{input_seq_len:64,num_kv_pairs:8,num_examples:8}]",
        "trainer.max_steps=4", "trainer.val_check_interval=2"]


def cfg_for(tmp_path, *extra):
    return make_cfg("experiment=recall/mqar_L64_D4", *TINY, f"paths.data_dir={tmp_path / 'data'}",
                    f"paths.log_dir={tmp_path / 'logs'}", *extra)


@pytest.mark.parametrize("model", ["recall_sw_ovq", "recall_tvq"])
def test_mqar_runs_end_to_end(tmp_path, model):
    metrics = train(cfg_for(tmp_path, f"model={model}"), tmp_path / "run")
    assert metrics["step"] == 4
    for key in ("val/acc", "val/loss", "val/acc/L32_D2", "val/acc/L64_D8"):
        assert key in metrics and 0 <= metrics[key] <= (1 if "acc" in key else 100)
    assert metrics["val/acc"] == pytest.approx((metrics["val/acc/L32_D2"] + metrics["val/acc/L64_D8"]) / 2)
    assert json.loads((tmp_path / "run" / DONE).read_text()) == metrics
    assert list((tmp_path / "data" / "mqar").glob("*.npz"))
    module = RecallModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.segment_names == ["L32_D2", "L64_D8"]


def test_one_test_segment_and_a_query_gap_run_end_to_end(tmp_path):
    """A single test segment (its accuracy comes back 0-d from torchmetrics) and data.query_gap reach the run."""
    metrics = train(cfg_for(tmp_path, "model=recall_tvq", "data.query_gap=16",
                            "data.test_segments=[{input_seq_len:32,num_kv_pairs:2,num_examples:16}]"),
                    tmp_path / "run")
    assert metrics["step"] == 4 and 0 <= metrics["val/acc/L32_D2"] <= 1
    assert metrics["val/acc"] == metrics["val/acc/L32_D2"]


def test_accuracy_counts_only_query_positions(tmp_path):
    """An oracle that predicts the target everywhere scores 1; the loss ignores unmasked positions."""
    cfg = cfg_for(tmp_path)
    module = RecallModule.from_config(cfg)
    inputs = torch.randint(0, 256, (3, 32))
    targets = torch.randint(0, 256, (3, 32))
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[:, [20, 24]] = True

    class Oracle(torch.nn.Module):
        def forward(self, x, state=None):
            logits = torch.nn.functional.one_hot(targets[:, :x.shape[1]], 256).float() * 50

            class A:
                pass
            a = A()
            a.state = state
            return logits, a
    module.model = Oracle()
    nll, correct, count = module.predict_batch(inputs, targets, mask)
    assert correct.tolist() == [2.0, 2.0, 2.0] and count.tolist() == [2.0, 2.0, 2.0] and float(nll) < 1e-6


@pytest.mark.parametrize("override, key", [
    (["model.vocab_size=40"], "model.vocab_size"),
    (["data.test_segments=[{input_seq_len:32,num_kv_pairs:9,num_examples:8}]"], "data.test_segments"),
    (["data.train_segments=[]"], "data.train_segments"),
    (["model.block_len=24"], "model.block_len"),
    (["model.mixer.ovq.growth=exp", "model=recall_sw_ovq"], "model.mixer.ovq.growth"),
    (["+model.ovq_n_max=8", "model=recall_sw_ovq"], "model.ovq_n_max is now model.mixer.ovq.n_max"),
    (["update_len=0"], "update_len"),
    (["data.query_gap=25"], "data.query_gap"),
])
def test_bad_recall_config_fails_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RecallModule.validate_config(cfg_for(tmp_path, *override))


def test_recall_table_collects_runs_and_evaluates_longer_lengths(tmp_path):
    from vqformer.results.recall import main

    train(cfg_for(tmp_path, "model=recall_sw_ovq", "trainer.max_steps=2"), tmp_path / "runs" / "a")
    main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--lengths", "128:4",
          "--n-examples", "4", "--ovq-n-max", "8", "--passkey", "256"])
    rows = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("experiment,arm") and len(rows) == 1 + 2 + 2 + 2   # 2 val, lengthgen+passkey, @8
    assert any(",passkey,256,1," in r for r in rows)
    assert any(",sw-ovq-64@8," in r for r in rows) and any(",lengthgen,128,4," in r for r in rows)
    assert (tmp_path / "out" / "recall_memory.png").stat().st_size > 1000


def test_recall_evaluation_counts_tokens(tmp_path, capfd):
    from vqformer.results.recall import main
    train(cfg_for(tmp_path, "model=recall_tvq", "trainer.max_steps=2", "trainer.enable_progress_bar=false"),
          tmp_path / "runs" / "a")
    capfd.readouterr()
    main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--lengths", "128:4",
          "--n-examples", "4", "--passkey", "256"])
    err = capfd.readouterr().err
    lines = progress_lines(err, "recall a")   # 4 MQAR examples of 128 tokens, 4 passkeys of 256
    assert len(lines) >= 2 and lines[-1][0] == lines[-1][1] == pytest.approx(4 * 128 + 4 * 256, rel=0.01), err[-2000:]
    assert [d for d, _ in lines] == sorted(d for d, _ in lines)
