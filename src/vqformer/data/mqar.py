"""Multi-query associative recall (MQAR), the Zoology generator, seeded and cached on disk.

Spec: ``docs/ovq.md`` §2.1. Per example: D distinct keys from ids [1, V/2) and D distinct
values from [V/2, V); the context block ``k1 v1 … kD vD`` (repeated ``num_passes`` times); then a query block
in which each key appears exactly once, at slot g (two positions per slot) drawn without replacement from
p(g) ∝ g^(a−1), g = 1…(L − context − gap)/2, the first slot ``query_gap`` filler tokens after the context (0 by
default, Zoology's layout; a gap puts every pair farther back than the gap). Inputs and labels are the (L+1)-sequence shifted by one: the label
at the position whose input is a queried key is its value, every other label is ``IGNORE`` (−100). With
``random_non_queries`` the remaining 0 inputs become uniform random ids in [0, V).

Train and test segments draw from disjoint seed streams; a segment is cached as ``<root>/mqar/<md5>.npz``
keyed by its parameters and seed, written atomically, with the sha256 of its arrays inside.
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .files import DataIntegrityWarning, atomic_path, ensure_writable

IGNORE = -100


@dataclass(frozen=True)
class MQARSegment:
    input_seq_len: int
    num_kv_pairs: int
    num_examples: int

    @property
    def name(self) -> str:
        return f"L{self.input_seq_len}_D{self.num_kv_pairs}"


def check_segment(seg: MQARSegment, vocab_size: int, num_passes: int = 1, key: str = "data",
                  query_gap: int = 0) -> None:
    L, D = seg.input_seq_len, seg.num_kv_pairs
    if not isinstance(query_gap, int) or isinstance(query_gap, bool) or query_gap < 0:
        raise ValueError(f"data.query_gap={query_gap!r} must be an integer >= 0")
    for name in ("input_seq_len", "num_kv_pairs", "num_examples"):
        if not isinstance(getattr(seg, name), int) or getattr(seg, name) < 1:
            raise ValueError(f"{key}.{name}={getattr(seg, name)!r} must be a positive integer")
    if L % 2:
        raise ValueError(f"{key}.input_seq_len={L} must be even")
    if 2 * D * num_passes + query_gap + 2 * D > L:
        raise ValueError(f"{key}: num_kv_pairs={D} with data.query_gap={query_gap} does not fit input_seq_len={L} "
                         f"(2·D·num_passes + query_gap + 2·D <= L)")
    if vocab_size % 2 or vocab_size // 2 - 1 < D:
        raise ValueError(f"data.vocab_size={vocab_size} must be even with at least num_kv_pairs={D} key ids")


def _choose_distinct(rng: np.random.Generator, n: int, low: int, high: int, k: int) -> np.ndarray:
    """n rows of k distinct ids from [low, high), uniformly (random priorities, smallest k)."""
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, (1 << 22) // (high - low))
    for i in range(0, n, step):
        r = rng.random((min(step, n - i), high - low))
        out[i:i + step] = np.argpartition(r, k - 1, axis=1)[:, :k] + low if k < high - low else np.argsort(r, 1) + low
    return out


def multiquery_ar(vocab_size: int, num_examples: int, input_seq_len: int, num_kv_pairs: int, seed: int,
                  power_a: float = 0.01, num_passes: int = 1, random_non_queries: bool = False,
                  query_gap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) int64 arrays [N, L] of §2.1; labels are IGNORE except at the D query positions."""
    V, N, L, D = vocab_size, num_examples, input_seq_len, num_kv_pairs
    check_segment(MQARSegment(L, D, N), V, num_passes, query_gap=query_gap)
    rng = np.random.default_rng(seed)
    keys = _choose_distinct(rng, N, 1, V // 2, D)
    values = _choose_distinct(rng, N, V // 2, V, D)
    context = np.tile(np.stack([keys, values], axis=2).reshape(N, 2 * D), (1, num_passes))
    C = context.shape[1]
    Q = C + query_gap                   # first query position; with the gap 0 the draws are Zoology's
    space = (L - Q) // 2
    # Slots without replacement from p(g) ∝ g^(a-1): Gumbel top-D of log p (the same law as sequential draws).
    log_p = (power_a - 1) * np.log(np.arange(1, space + 1))
    gaps = np.argsort(-(log_p + rng.gumbel(size=(N, space))), axis=1)[:, :D]
    seq = np.zeros((N, L + 1), dtype=np.int64)
    seq[:, :C] = context
    rows = np.arange(N)[:, None]
    seq[rows, Q + 2 * gaps] = keys
    labels = np.full((N, L + 1), IGNORE, dtype=np.int64)
    labels[rows, Q + 2 * gaps + 1] = values
    inputs, labels = seq[:, :-1].copy(), labels[:, 1:].copy()
    if random_non_queries:
        zero = inputs == 0
        inputs[zero] = rng.integers(0, V, size=int(zero.sum()))
    return inputs, labels


def segment_seed(seed: int, split: str, index: int) -> int:
    """Disjoint seed streams for train and test segments (Zoology splits the 32-bit range in halves)."""
    ss = np.random.SeedSequence([seed, {"train": 0, "test": 1}[split], index])
    return int(ss.generate_state(1, dtype=np.uint32)[0]) >> 1 | (0 if split == "train" else 1 << 31)


def _content_sha256(inputs: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(inputs.astype(np.int32).tobytes() + labels.astype(np.int32).tobytes()).hexdigest()


def _read_checked(path: Path) -> tuple[np.ndarray, np.ndarray] | str:
    """The cached arrays, or why they are not the ones written (the file records their sha256)."""
    try:
        with np.load(path) as f:
            inputs, labels, recorded = f["inputs"], f["labels"], str(f["sha256"]) if "sha256" in f else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        return f"{path}: unreadable ({e})"
    if recorded is None:
        return f"{path}: written without a sha256"
    actual = _content_sha256(inputs, labels)
    if actual != recorded:
        return f"{path}: content sha256 {actual}, the file records {recorded}"
    return inputs.astype(np.int64), labels.astype(np.int64)


def load_segment(root: str | Path | None, seg: MQARSegment, split: str, index: int, *, vocab_size: int,
                 seed: int, power_a: float, num_passes: int, random_non_queries: bool, query_gap: int = 0,
                 verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Generate (or read back from the cache) one segment; the cache file is written atomically and records the
    sha256 of its arrays. With `verify` (prepare_data, once) a cached file whose arrays do not match it, or that
    has none, is generated again (docs/data_integrity.md)."""
    params = dict(asdict(seg), vocab_size=vocab_size, seed=segment_seed(seed, split, index), power_a=power_a,
                  num_passes=num_passes, random_non_queries=random_non_queries, version=1)
    if query_gap:                       # absent at 0, so the segments cached before the knob keep their names
        params["query_gap"] = query_gap
    gen = lambda: multiquery_ar(vocab_size, seg.num_examples, seg.input_seq_len, seg.num_kv_pairs,
                                params["seed"], power_a, num_passes, random_non_queries, query_gap)
    if root is None:
        return gen()
    path = Path(root) / "mqar" / (hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest() + ".npz")
    if path.exists():
        if not verify:
            with np.load(path) as f:
                return f["inputs"].astype(np.int64), f["labels"].astype(np.int64)
        checked = _read_checked(path)
        if not isinstance(checked, str):
            return checked
        ensure_writable(path.parent, f"{checked}; it would be generated again, but cannot be",
                        f"Make the folder writable and run again, or delete {path}.")
        warnings.warn(f"{checked}: generating it again", DataIntegrityWarning, stacklevel=2)
    inputs, labels = gen()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, inputs=inputs.astype(np.int32), labels=labels.astype(np.int32),
                 params=json.dumps(params), sha256=_content_sha256(inputs, labels))
    return inputs, labels


__all__ = ["MQARSegment", "multiquery_ar", "load_segment", "segment_seed", "check_segment", "IGNORE"]
