"""Adding a mixer is one module and one config file: this file registers a toy mixer (a causal, exponentially
decayed mean of the values) with its own config dataclass, selects it with a model config file on Hydra's search
path, and trains it through the same ``model.mixer.<name>.<knob>`` path users use. The registry contract is
checked too: duplicate names and non-dataclass configs are refused, bad knobs of the new mixer stop the run
before any work and name the nested key."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from torch import Tensor

from conftest import read_metrics, tiny_cfg
from vqformer.config import ConfigError, model_config
from vqformer.lit.checkpoint import load_module
from vqformer.lit.runner import DONE, train
from vqformer.models import TransformerVQ
from vqformer.nn.mixers import MIXERS, Mixer, MixerConfig, MixerOutput, invalid, mixers_schema, register_mixer


@dataclass
class MeanConfig(MixerConfig):
    decay: float = 1.0          # weight of a value d tokens back: decay**d (1: the plain causal mean)

    def validate(self, key):
        super().validate(key)
        if not 0.0 < self.decay <= 1.0:
            raise invalid(f"{key}.decay", self.decay, "must be in (0, 1]")


@dataclass
class MeanState:
    pos: int
    total: Tensor               # [B,H,Dv]: decayed sum of the values so far
    weight: Tensor              # [B,H,1]: decayed number of values so far

    def detach(self):
        return MeanState(self.pos, self.total.detach(), self.weight.detach())


@register_mixer("toy_mean")
class MeanMixer(Mixer):
    """o_t = Σ_{j<=t} decay^(t-j) v_j / Σ_{j<=t} decay^(t-j): no queries, keys or positions."""
    config_class = MeanConfig

    def forward(self, q, k, v, state=None, sin_mask=None, mask=None):
        B, H, T, Dv = v.shape
        if state is None:
            state = MeanState(0, v.new_zeros(B, H, Dv), v.new_zeros(B, H, 1))
        outs, total, weight = [], state.total, state.weight
        for t in range(T):
            total = self.cfg.decay * total + v[:, :, t]
            weight = self.cfg.decay * weight + 1
            outs.append(total / weight)
        o = torch.stack(outs, 2).repeat_interleave(self.dims.n_q // H, dim=1)
        return MixerOutput(o, MeanState(state.pos + T, total, weight))

    def state_bytes(self, length):
        return 4 * self.dims.n_kv * (self.dims.d_v + 1)


MODEL_FILE = """defaults:
  - transformer_vq
  - _self_
attn_type: toy_mean
mixer:
  toy_mean:
    decay: 0.5
"""


@pytest.fixture
def search_path(tmp_path):
    """The one config file of the new mixer, ``model/toy_mean.yaml``, on Hydra's search path."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "toy_mean.yaml").write_text(MODEL_FILE)
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def test_the_config_path_builds_the_registered_mixer_with_its_typed_config(tmp_path, search_path):
    cfg = tiny_cfg(tmp_path, search_path, "model=toy_mean", "model.mixer.toy_mean.decay=0.25")
    mcfg = model_config(cfg)
    assert mcfg.mixer["toy_mean"] == MeanConfig(decay=0.25)
    model = TransformerVQ(mcfg).double().eval()
    assert model.units and all(isinstance(u.mixer, MeanMixer) and u.mixer.cfg.decay == 0.25 for u in model.units)
    assert model.quantizers() == []
    assert model.state_bytes(10) == model.state_bytes(10_000) == len(model.units) * 4 * (mcfg.d_v + 1)
    # The mixer's state is carried like any other: token by token equals one call.
    toks = torch.randint(0, 259, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one, _ = model(toks)
        state, outs = model.empty_state(), []
        for t in range(32):
            out, aux = model(toks[:, t:t + 1], state)
            state = aux.state
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), one, atol=1e-12, rtol=0)


def test_a_registered_mixer_trains_through_the_normal_config_path(tmp_path, search_path):
    cfg = tiny_cfg(tmp_path, search_path, "model=toy_mean", "trainer.max_steps=12", "trainer.val_check_interval=4",
                   "ckpt_every=4")
    metrics = train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / DONE).exists() and metrics["step"] == 12
    vals = [float(r["val/bpb"]) for r in read_metrics(tmp_path / "run") if r.get("val/bpb")]
    assert len(vals) >= 2 and all(v == v for v in vals) and vals[-1] < vals[0], vals
    model = load_module(tmp_path / "run").model
    assert all(isinstance(u.mixer, MeanMixer) and u.mixer.cfg.decay == 0.5 for u in model.units)


def test_a_bad_knob_of_the_new_mixer_stops_before_any_work(tmp_path, search_path):
    cfg = tiny_cfg(tmp_path, search_path, "model=toy_mean", "model.mixer.toy_mean.decay=2.0")
    with pytest.raises(ConfigError, match=r"model\.mixer\.toy_mean\.decay=2\.0 is invalid: must be in \(0, 1\]"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
    cfg = tiny_cfg(tmp_path, search_path, "model=toy_mean", "model.mixer.toy_mean.decay=high")
    with pytest.raises(ConfigError, match=r"model\.mixer\.toy_mean\.decay='high' is invalid: must be float"):
        train(cfg, tmp_path / "run")


def test_the_registry_refuses_a_second_mixer_of_the_same_name_and_untyped_configs():
    assert MIXERS["toy_mean"] is MeanMixer and MeanMixer.name == "toy_mean"
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("toy_mean")(type("Other", (MeanMixer,), {}))
    with pytest.raises(TypeError, match="config_class"):
        register_mixer("untyped")(type("Untyped", (Mixer,), {"config_class": dict}))
    assert "untyped" not in MIXERS
    assert set(MIXERS) >= {"vq", "full", "swa", "ovq", "toy_mean"}


def test_the_mixers_schema_types_every_registered_knob_for_a_structured_config():
    """What a Hydra ConfigStore schema of ``model.mixer`` checks at composition time, the new mixer included."""
    schema = OmegaConf.structured(mixers_schema())
    assert schema.toy_mean.decay == 1.0 and schema.ovq.n_max == 64 and schema.swa.window == 64
    with pytest.raises(ValidationError):
        schema.toy_mean.decay = "high"
    with pytest.raises(ConfigKeyError, match="nmax"):
        OmegaConf.merge(schema, {"ovq": {"nmax": 3}})
    merged = OmegaConf.merge(schema, {"toy_mean": {"decay": 0.5}})
    from vqformer.models import TransformerVQConfig
    cfg = TransformerVQConfig(vocab_size=11, d_model=8, d_k=4, d_v=6, n_layer=1, n_code=5, block_len=4,
                              attn_type="toy_mean", mixer=OmegaConf.to_container(merged))
    assert cfg.mixer["toy_mean"] == MeanConfig(decay=0.5)
