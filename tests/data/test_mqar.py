"""MQAR generator (docs/ovq.md §2.1): key/value halves, D pairs, query placement by the power law, only
queries scored, determinism by seed, disjoint train/test seeds, atomic cache; the recall data module."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from vqformer.data.mqar import IGNORE, MQARSegment, load_segment, multiquery_ar, segment_seed
from vqformer.data.recall_datamodule import MQARDataModule

V, N, L, D = 64, 400, 64, 6


def test_structure_of_every_example():
    x, y = multiquery_ar(V, N, L, D, seed=0)
    assert x.shape == y.shape == (N, L) and x.dtype == y.dtype == np.int64
    for i in range(N):
        keys, values = x[i, 0:2 * D:2], x[i, 1:2 * D:2]
        assert len(set(keys)) == D and len(set(values)) == D                  # distinct, without replacement
        assert ((1 <= keys) & (keys < V // 2)).all() and ((V // 2 <= values) & (values < V)).all()
        scored = np.flatnonzero(y[i] != IGNORE)
        assert len(scored) == D and (scored >= 2 * D).all()                    # only the query block is scored
        kv = dict(zip(keys, values))
        assert sorted(x[i, scored]) == sorted(keys)                            # each key queried once
        for p in scored:
            assert y[i, p] == kv[x[i, p]]                                      # label = the key's value
            assert (p - 2 * D) % 2 == 0                                        # queries sit on slot starts
        rest = np.ones(L, bool)
        rest[:2 * D] = False
        rest[scored] = False
        assert (x[i, rest] == 0).all()                                        # no random non-queries
        assert not set(values) & set(x[i, 2 * D:])                            # answers never shown in queries


def test_query_gaps_follow_the_power_law():
    """p(g) ∝ g^(a-1) with a = 0.01 favours small gaps; with a = 1 the law is uniform."""
    x, y = multiquery_ar(V, 4000, 128, 4, seed=1)
    slots = (np.argwhere(y != IGNORE)[:, 1] - 8) // 2 + 1
    counts = np.bincount(slots, minlength=61)[1:]
    assert counts[0] > counts[1] > counts[3] > counts[20] and counts[:4].sum() > counts[-30:].sum()
    x, y = multiquery_ar(V, 4000, 128, 4, seed=1, power_a=1.0)
    counts = np.bincount((np.argwhere(y != IGNORE)[:, 1] - 8) // 2, minlength=60)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_random_non_queries_fill_the_gaps():
    x, y = multiquery_ar(V, 50, L, D, seed=2, random_non_queries=True)
    assert (x[:, 2 * D:] != 0).mean() > 0.9 and (y != IGNORE).sum(1).tolist() == [D] * 50


def test_deterministic_by_seed():
    a = multiquery_ar(V, 20, L, D, seed=5)
    b = multiquery_ar(V, 20, L, D, seed=5)
    c = multiquery_ar(V, 20, L, D, seed=6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b)) and not np.array_equal(a[0], c[0])
    assert segment_seed(0, "train", 0) != segment_seed(0, "test", 0)
    assert segment_seed(0, "train", 0) < 2 ** 31 <= segment_seed(0, "test", 0)


@pytest.mark.parametrize("L_, D_, V_", [(63, 2, 64), (16, 5, 64), (64, 40, 64), (64, 4, 7)])
def test_impossible_segments_are_rejected(L_, D_, V_):
    with pytest.raises(ValueError, match="input_seq_len|num_kv_pairs|vocab_size"):
        multiquery_ar(V_, 2, L_, D_, seed=0)


def test_cache_is_reused_and_written_atomically(tmp_path):
    kw = dict(vocab_size=V, seed=0, power_a=0.01, num_passes=1, random_non_queries=False)
    seg = MQARSegment(L, D, 30)
    x1, y1 = load_segment(tmp_path, seg, "train", 0, **kw)
    files = list((tmp_path / "mqar").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and not files[0].name.startswith(".")
    mtime = files[0].stat().st_mtime_ns
    x2, y2 = load_segment(tmp_path, seg, "train", 0, **kw)
    assert files[0].stat().st_mtime_ns == mtime and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x3, _ = load_segment(tmp_path, seg, "test", 0, **kw)                      # another seed stream, another file
    assert len(list((tmp_path / "mqar").iterdir())) == 2 and not np.array_equal(x1, x3)


def test_datamodule_batches(tmp_path):
    dm = MQARDataModule(train_segments=[dict(input_seq_len=32, num_kv_pairs=2, num_examples=40),
                                        dict(input_seq_len=64, num_kv_pairs=8, num_examples=20)],
                        test_segments=[dict(input_seq_len=128, num_kv_pairs=16, num_examples=12)],
                        vocab_size=V, batch_size=8, eval_batch_size=5, root=str(tmp_path), seed=3)
    dm.prepare_data()
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 + 3 and {b["inputs"].shape[1] for b in batches} == {32, 64}
    for b in batches:
        L_ = b["inputs"].shape[1]
        assert b["mask"].sum(1).tolist() == [2 if L_ == 32 else 8] * len(b["mask"])
        assert (b["targets"][~b["mask"]] == 0).all() and (b["targets"][b["mask"]] >= V // 2).all()
    assert [len(b["inputs"]) for b in dm.val_dataloader()] == [5, 5, 2] and dm.segment_names == ["L128_D16"]
    again = list(MQARDataModule(train_segments=[dict(input_seq_len=32, num_kv_pairs=2, num_examples=40),
                                                dict(input_seq_len=64, num_kv_pairs=8, num_examples=20)],
                                test_segments=[dict(input_seq_len=128, num_kv_pairs=16, num_examples=12)],
                                vocab_size=V, batch_size=8, root=str(tmp_path), seed=3).train_dataloader())
    assert all(torch.equal(a["inputs"], b["inputs"]) for a, b in zip(batches, again))
    capped = MQARDataModule(train_segments=[dict(input_seq_len=32, num_kv_pairs=2, num_examples=8)],
                            test_segments=[dict(input_seq_len=128, num_kv_pairs=16, num_examples=12)],
                            vocab_size=V, batch_size=8, limit_eval_bytes=512)
    assert sum(len(b["inputs"]) for b in capped.val_dataloader()) == 4


def test_datamodule_rejects_bad_segments():
    with pytest.raises(ValueError, match=r"data\.test_segments\[0\]"):
        MQARDataModule(train_segments=[dict(input_seq_len=32, num_kv_pairs=2, num_examples=8)],
                       test_segments=[dict(input_seq_len=32, num_kv_pairs=9, num_examples=8)], vocab_size=V)


def test_query_gap_puts_every_pair_that_far_back():
    """With data.query_gap = G every query sits at least G tokens after the context, so the value it asks for
    is more than G tokens back; the queries still cover every key once with its value as label."""
    G, L_, D_ = 40, 96, 4
    x, y = multiquery_ar(V, 300, L_, D_, seed=3, query_gap=G)
    for i in range(300):
        keys, values = x[i, 0:2 * D_:2], x[i, 1:2 * D_:2]
        scored = np.flatnonzero(y[i] != IGNORE)
        assert sorted(x[i, scored]) == sorted(keys) and len(scored) == D_
        assert scored.min() >= 2 * D_ + G and ((scored - 2 * D_ - G) % 2 == 0).all()
        assert dict(zip(x[i, scored], y[i, scored])) == dict(zip(keys, values))
        filler = np.ones(L_, bool)
        filler[:2 * D_] = False
        filler[scored] = False
        assert (x[i, filler] == 0).all()                                      # the gap holds filler only
    # The slot law is the same, shifted: the first slot after the gap is still the most likely.
    slots = (np.argwhere(y != IGNORE)[:, 1] - 2 * D_ - G) // 2
    assert np.bincount(slots)[0] == np.bincount(slots).max()


def test_query_gap_zero_is_the_zoology_layout_and_keeps_the_cache_names(tmp_path):
    a = multiquery_ar(V, 50, L, D, seed=4)
    b = multiquery_ar(V, 50, L, D, seed=4, query_gap=0)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    kw = dict(vocab_size=V, seed=0, power_a=0.01, num_passes=1, random_non_queries=False)
    load_segment(tmp_path, MQARSegment(L, D, 10), "train", 0, **kw)
    load_segment(tmp_path, MQARSegment(L, D, 10), "train", 0, query_gap=0, **kw)
    # The file name is the md5 of the parameters as they were before the knob existed (version 1, no gap key).
    params = dict(input_seq_len=L, num_kv_pairs=D, num_examples=10, vocab_size=V,
                  seed=segment_seed(0, "train", 0), power_a=0.01, num_passes=1, random_non_queries=False, version=1)
    name = hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest() + ".npz"
    assert [p.name for p in (tmp_path / "mqar").iterdir()] == [name]
    load_segment(tmp_path, MQARSegment(L, D, 10), "train", 0, query_gap=8, **kw)   # another segment, another file
    assert len(list((tmp_path / "mqar").iterdir())) == 2


@pytest.mark.parametrize("gap", [-1, 1.5, True, 64 - 8 - 8 + 1])
def test_bad_query_gap_is_rejected_naming_the_key(gap):
    with pytest.raises(ValueError, match=r"data\.query_gap"):
        multiquery_ar(V, 2, 64, 4, seed=0, query_gap=gap)
    with pytest.raises(ValueError, match=r"data\.query_gap"):
        MQARDataModule(train_segments=[dict(input_seq_len=64, num_kv_pairs=4, num_examples=8)],
                       test_segments=[dict(input_seq_len=64, num_kv_pairs=4, num_examples=8)], vocab_size=V,
                       query_gap=gap)
