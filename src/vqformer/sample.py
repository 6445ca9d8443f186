"""Sample from a run's checkpoint token by token with the carried state: ``python -m vqformer.sample run_dir=...``.

Spec: ``docs/transformer_vq.md`` §3.5 (sampling = the same state machine one token at a time,
nucleus sampling with ``p_nucleus``).
"""
import hydra
import torch
from omegaconf import DictConfig

from . import CONF_DIR
from .data.lm_datamodule import BYTE_OFFSET, EOS


def nucleus(logits: torch.Tensor, p: float, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Sample from the smallest set of tokens whose probability reaches ``p``."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < p
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return idx.gather(-1, choice)


@torch.no_grad()
def generate(model, prompt: torch.Tensor, n_tokens: int, p: float, temperature: float, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=prompt.device).manual_seed(seed)
    logits, aux = model(prompt, model.empty_state())
    state, out = aux.state, []
    for _ in range(n_tokens):
        tok = nucleus(logits[:, -1], p, temperature, gen)
        out.append(tok)
        logits, aux = model(tok, state)
        state = aux.state
    return torch.cat(out, dim=1)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    from .lit.checkpoint import load_module
    model = load_module(cfg.run_dir, cfg.ckpt).model
    prompt = [EOS] + [b + BYTE_OFFSET for b in cfg.prompt.encode("utf-8")]
    x = torch.tensor([prompt] * cfg.n_samples)
    toks = generate(model, x, cfg.n_tokens, cfg.p_nucleus, cfg.temperature, cfg.seed)
    for row in toks.tolist():
        text = bytes(t - BYTE_OFFSET for t in row if t >= BYTE_OFFSET).decode("utf-8", errors="replace")
        print(cfg.prompt + text)
        print("-" * 80)


if __name__ == "__main__":
    main()
