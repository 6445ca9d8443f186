"""Every experiment composes and validates, the defaults order is the documented one, sweeps expand to
the expected number of jobs, and impossible configs fail with a message naming the key."""
from __future__ import annotations

import itertools

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import CONF, make_cfg
from vqformer.config import ConfigError, run_dir, validate

EXPERIMENTS = sorted(str(p.relative_to(CONF / "experiment").with_suffix(""))
                     for p in (CONF / "experiment").rglob("*.yaml"))
# Jobs each sweep file must expand to (the grid of its table); experiments not listed are single runs.
SWEEP_SIZES = {
    "tvq/ablation_codebook": 3, "tvq/sweep_block": 3, "tvq/ablation_cache": 2, "tvq/throughput": 18,
    "tvq/mini_codebook": 9, "tvq/mini_cache": 6, "tvq/mini_quadratic": 6, "tvq/mini_block": 9,
    "longvq/mini_lm_compare": 6, "tvq/parity_official_tiny": 3, "tvq/mechanism_cache": 6, "recall/mqar_L64_D4": 14, "recall/mqar_L256_D16": 14, "recall/ovq_ablations": 6,
    **{f"longvq/baselines_{t}": 3 for t in ("listops", "text", "retrieval", "image", "pathfinder", "pathx", "scifar")},
}


def test_experiments_exist():
    assert "tvq/enwik8" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = make_cfg(f"experiment={experiment}")
    for key in cfg:                              # every interpolation outside hydra's own node resolves
        if key != "hydra":
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
    validate(cfg, check_device=False)          # the GPU experiments compose on any machine
    assert cfg.name == experiment, "each experiment names itself (W&B group and run directory)"


def count_jobs(params) -> int:
    parser = OverridesParser.create()
    sizes = [len(list(parser.parse_override(f"{k}={v}").sweep_iterator())) for k, v in params.items()]
    return len(list(itertools.product(*[range(n) for n in sizes])))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_sweeps_expand_to_expected_jobs(experiment):
    params = OmegaConf.select(make_cfg(f"experiment={experiment}"), "hydra.sweeper.params") or {}
    assert (count_jobs(params) if params else 1) == SWEEP_SIZES.get(experiment, 1)


def test_defaults_order_experiment_then_debug():
    cfg = make_cfg("experiment=tvq/enwik8", "debug=fast")
    assert cfg.model.d_model == 768            # experiment beats the model group
    assert cfg.model.n_code == 512             # experiment's codebook choice beats the default s64
    assert cfg.trainer.max_steps == 4          # debug beats the experiment
    assert cfg.logger.wandb is None            # debug's logger override


def test_group_options_override_only_their_keys():
    base = OmegaConf.to_container(make_cfg(), resolve=False)
    new = OmegaConf.to_container(make_cfg("codebook=s512", "block=l256"), resolve=False)
    changed = {k for k in base["model"] if base["model"][k] != new["model"][k]}
    assert changed == {"n_code", "block_len"}
    assert new["model"]["n_code"] == 512 and new["model"]["block_len"] == 256
    base.pop("hydra"), new.pop("hydra")
    base.pop("model"), new.pop("model")
    assert base == new


def test_default_is_the_embedded_demo():
    cfg = make_cfg()
    assert cfg.data.name == "wiki_sample" and cfg.trainer.accelerator == "cpu"
    assert cfg.model.attn_type == "vq"
    validate(cfg)


def test_no_absolute_paths_or_eval_resolvers_in_configs():
    for p in CONF.rglob("*.yaml"):
        text = p.read_text()
        assert "${eval:" not in text, p
        assert not any(line.split(":", 1)[-1].strip().startswith("/") for line in text.splitlines()
                       if not line.strip().startswith(("#", "-"))), p


@pytest.mark.parametrize("override, key", [
    (["block=l512"], "block_len"),                      # L=512 does not divide update_len=256
    (["update_len=96"], "update_len"),                  # does not divide sequence_len=256
    (["data.name=nope"], "data.name"),
    (["data.batch_size=-1"], "data.batch_size"),
    (["sequence_len=-5"], "sequence_len"),
    (["model.n_code=0"], "model.n_code"),
    (["model.head_type=gqa"], "model.head_type"),
    (["micro_batch_size=3"], "micro_batch_size"),
    (["sequence_len=512", "update_len=256", "ckpt_every=3"], "ckpt_every"),
])
def test_bad_config_fails_naming_the_key(override, key):
    cfg = make_cfg(*override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize("hardware", sorted(p.stem for p in (CONF / "hardware").glob("*.yaml")))
def test_hardware_options_compose(hardware):
    cfg = make_cfg("experiment=tvq/enwik8", f"hardware={hardware}")
    validate(cfg, check_device=False)
    if hardware.startswith("slurm"):
        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node   # one task per GPU
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.use_distributed_sampler is False


def test_unknown_task_fails_naming_the_key():
    from vqformer.lit.tasks import task_class
    with pytest.raises(ConfigError, match="task='nope'"):
        task_class(make_cfg("task=nope").task)


def test_mini_sweeps_share_the_common_arm():
    """The four CPU ablations name job folders by the arm, so their common base arm is one run."""
    def job_dir(*overrides):
        cfg = make_cfg(*overrides)
        return run_dir(cfg, cfg.hydra, multirun=True)
    base = job_dir("experiment=tvq/mini_codebook", "codebook=s64", "seed=1")
    assert base == job_dir("experiment=tvq/mini_cache", "model.agg_cache=true", "seed=1")
    assert base == job_dir("experiment=tvq/mini_quadratic", "model.attn_type=vq", "seed=1")
    assert base == job_dir("experiment=tvq/mini_block", "block=l64", "seed=1")
    assert base != job_dir("experiment=tvq/mini_block", "block=l64", "seed=0")
    assert base != job_dir("experiment=tvq/mini_cache", "model.agg_cache=false", "seed=1")
