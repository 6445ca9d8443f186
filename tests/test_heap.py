"""The CPU heap policy (``vqformer/heap.py``): with ``keep`` a repeated step reuses the buffers the last one
freed instead of having the kernel fault in fresh zeroed pages. Counted with the process's minor page faults
(``getrusage``), a deterministic counter, not a timing. Each case runs in a fresh process: the policy is
process-wide and cannot be undone."""
import json
import os
import subprocess
import sys

import pytest

from vqformer.heap import ENV, glibc_version, set_cpu_heap

pytestmark = pytest.mark.skipif(glibc_version() is None, reason="the policy acts on glibc's malloc only")

PAGE = os.sysconf("SC_PAGE_SIZE")
SCRIPT = r"""
import json, resource, sys
import torch
import torch.nn.functional as F
from vqformer.heap import set_cpu_heap
torch.set_num_threads(1)
policy, what, sizes = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3].split(",")]
set_cpu_heap(policy)

def steady_faults(step, warm=12):
    # Warm-up: the first steps grow the heap, and glibc keeps up to 7 small tail pieces of aligned blocks in
    # its per-thread cache, each pinning a freed block that is then a few bytes too small for the same request
    # (measured: 7 steps of 64 MiB); from then on the heap is in a steady state.
    for _ in range(warm):
        step()
    # Per step, and the median of five: now and then one step faults a few dozen pages of interpreter-level
    # noise (measured: 55 pages in one run of six here, 77 in CI), which must not read as a per-step cost at
    # small T.
    rss0 = int(open("/proc/self/statm").read().split()[1])
    faults = []
    for _ in range(5):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"faults": sorted(faults)[2],
            "rss_growth_pages_per_step": (int(open("/proc/self/statm").read().split()[1]) - rss0) / 5}

out = {}
for n in sizes:
    if what == "tensor":                    # n bytes, written, freed
        def step():
            x = torch.empty(n // 4)
            x.fill_(1.0)
            del x
    else:                                   # a tiny model's training step on n tokens
        from vqformer.models.transformer_vq import TransformerVQ, TransformerVQConfig
        torch.manual_seed(0)
        model = TransformerVQ(TransformerVQConfig(vocab_size=32, d_model=32, d_k=16, d_v=64, n_layer=1,
                                                  n_code=16, block_len=16)).train()
        tok = torch.randint(0, 32, (1, n + 1))
        def step():
            logits, aux = model(tok[:, :-1])
            (F.cross_entropy(logits.flatten(0, 1), tok[0, 1:]) + aux.commit_loss).backward()
            model.zero_grad(set_to_none=True)
    out[n] = steady_faults(step)
print(json.dumps(out))
"""


def steady_faults(policy: str, what: str, sizes, mmap_threshold: int | None = None) -> dict[int, dict]:
    """Per size: minor faults of a step after the warm-up (median of five), and the resident pages those
    steps added, per step."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["OMP_NUM_THREADS"] = "1"
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    res = subprocess.run([sys.executable, "-c", SCRIPT, policy, what, ",".join(map(str, sizes))],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    return {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def test_a_kept_heap_reuses_buffers_above_glibcs_largest_mmap_threshold():
    """64 MiB is above the 32 MiB glibc's dynamic threshold can reach: by default every such buffer is a
    fresh mapping, faulted in page by page on every step; kept, the freed block is reused."""
    n = 64 << 20
    pages = n // PAGE
    release = steady_faults("release", "tensor", [n])[n]
    keep = steady_faults("keep", "tensor", [n])[n]
    assert release["faults"] >= 0.9 * pages, release     # the regime the policy is for (else this proves nothing)
    assert keep["faults"] <= 0.02 * pages, keep
    assert keep["rss_growth_pages_per_step"] <= 0.02 * pages, keep  # steady: the heap does not keep growing


def test_a_training_steps_page_faults_per_token_do_not_grow_with_T_when_the_heap_is_kept():
    """A whole training step (forward, loss, backward) of a tiny model. glibc's mmap threshold is lowered to
    128 KiB here so that the tiny model's activations are in the regime a [T, 512] tensor reaches at T = 16k
    with the default threshold: released, every step faults its activations in again, more per token at
    the longer T; kept, a step after the warm-up faults (almost) nothing at either length and the heap
    stops growing."""
    sizes = [256, 2048]
    release = steady_faults("release", "model", sizes, mmap_threshold=128 << 10)
    keep = steady_faults("keep", "model", sizes, mmap_threshold=128 << 10)
    assert all(release[T]["faults"] / T > 1 for T in sizes), release   # the regime: faults every step,
    assert release[2048]["faults"] / 2048 > 2 * release[256]["faults"] / 256, release   # more per token at long T
    # kept: a few dozen pages of Python-level noise at most, against > 1 per token released
    assert all(keep[T]["faults"] / T < 0.25 for T in sizes), keep
    assert all(keep[T]["rss_growth_pages_per_step"] / T < 0.25 for T in sizes), keep


def test_the_policy_is_checked_and_release_changes_nothing():
    with pytest.raises(ValueError, match=r"bench.cpu_heap='kept' is invalid"):
        set_cpu_heap("kept", key="bench.cpu_heap")
    with pytest.raises(ValueError, match=ENV):
        set_cpu_heap(env={ENV: "never"})
    applied, why = set_cpu_heap(env={ENV: "release"})   # in this process: nothing may change
    assert not applied and ENV in why
