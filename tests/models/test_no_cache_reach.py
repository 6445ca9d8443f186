"""The mechanism experiment's premise (experiments/mechanism/README.md): without the compressive cache the
Transformer-VQ of ``experiment=tvq/mechanism_cache`` cannot see far enough back to answer any of its queries,
and with the cache it can. The reach is measured on the model (which positions' outputs change when one input
token changes), not read from the config, and every query of the experiment's train and test data is checked
against it."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import make_cfg
from vqformer.lit.recall_module import RecallModule

pytestmark = pytest.mark.usefixtures("single_thread")


def reach(cfg, T: int) -> int:
    """The largest t - j such that changing input token j changes the logits at position t (float64, eval)."""
    torch.manual_seed(0)
    model = RecallModule.from_config(cfg).model.double().eval()
    x = torch.randint(1, cfg.data.vocab_size, (1, T), generator=torch.Generator().manual_seed(1))
    batch = x.repeat(T + 1, 1)
    j = torch.arange(T)
    batch[j + 1, j] = batch[j + 1, j] % (cfg.data.vocab_size - 1) + 1       # row j + 1 changes token j only
    with torch.no_grad():
        logits, _ = model(batch)
    changed = (logits[1:] - logits[:1]).abs().amax(-1) > 1e-9                 # [j, t]
    assert not changed.tril(-1).any()                                        # causal: nothing before j
    return int(max((changed[k].nonzero().max() - k for k in range(T) if changed[k].any()), default=0))


def experiment(tmp_path, *extra):
    return make_cfg("experiment=tvq/mechanism_cache", f"paths.data_dir={tmp_path}", *extra)


def test_no_cache_reach_is_n_layer_blocks_and_the_cache_reaches_everything(tmp_path):
    cfg = experiment(tmp_path, "model.agg_cache=false")
    L, n_layer, T = cfg.model.block_len, cfg.model.n_layer, cfg.sequence_len
    assert reach(cfg, T) == n_layer * L              # a window of L + 1 keys per layer (docs/transformer_vq.md §3.1)
    assert reach(experiment(tmp_path, "model.agg_cache=true"), T) == T - 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_query_of_the_experiment_is_beyond_the_no_cache_reach(tmp_path, seed):
    cfg = experiment(tmp_path, f"seed={seed}")
    reach_no_cache = reach(experiment(tmp_path, "model.agg_cache=false"), cfg.sequence_len)
    dm = instantiate(cfg.data)
    D = cfg.data.train_segments[0].num_kv_pairs
    nearest = []
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for b in loader:
            x, mask = b["inputs"], b["mask"]
            keys = x[:, 0:2 * D:2]                                           # context k1 v1 ... kD vD
            rows, q = mask.nonzero(as_tuple=True)
            slot = (keys[rows] == x[rows, q, None]).int().argmax(1)          # which pair each query asks for
            assert (keys[rows, slot] == x[rows, q]).all()
            assert (b["targets"][rows, q] == x[rows, 2 * slot + 1]).all()    # the label is that pair's value
            nearest.append(int((q - (2 * slot + 1)).min()))                  # query position - value position
    assert min(nearest) > cfg.data.query_gap > 2 * cfg.model.block_len
    assert min(nearest) > reach_no_cache
