"""ListOps: the LRA generator (operators MIN, MAX, MED, SM over digits), deterministic by seed, and its
tokenizer.

Spec: ``docs/longvq.md`` §4.3 (generator of ``lra_benchmarks/data/listops.py``) and §4.2
(tokens). A node below ``max_depth`` is a leaf (uniform digit) when ``r > 0.25``, else an operator node with
``randint(2, max_args)`` children; the root has depth 1; ``length = 2 + Σ child lengths`` (operator and ``]``).
Trees with ``min_len < length < max_len`` are kept once each until ``n_train + n_val + n_test`` are
collected, split in order. Unlike the original (unseeded, ``set`` order) the stream is a seeded
``random.Random`` and insertion-ordered, so a seed reproduces the data exactly. The files are the LRA release
format: ``basic_{train,val,test}.tsv`` with header ``Source\\tTarget`` and the parenthesized serialization.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from ...progress import progress
from ..files import atomic_path, atomic_write_bytes, check_prepared, sha256_file, split_entries

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUE_P = 0.25
# Token ids: 0 pad, 1..10 digits 0..9, 11..14 operators, 15 the closing bracket (LRA's "X").
PAD = 0
VOCAB = {str(d): d + 1 for d in range(10)} | {op: 11 + i for i, op in enumerate(OPERATORS)} | {END: 15}
VOCAB_SIZE = 16
SPLITS = ("train", "val", "test")


def generate_tree(rng: random.Random, depth: int = 1, max_depth: int = 10, max_args: int = 10):
    """-> (tree, length). A tree is a digit or ``((...((op, a1), a2)...), END)`` (LRA's nested pairs)."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        return rng.randint(0, 9), 1
    length, n = 2, rng.randint(2, max_args)
    t = rng.choice(OPERATORS)
    for _ in range(n):
        child, child_len = generate_tree(rng, depth + 1, max_depth, max_args)
        t, length = (t, child), length + child_len
    return (t, END), length


def to_string(t) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, int):
        return str(t)
    return f"( {to_string(t[0])} {to_string(t[1])} )"


def evaluate_tokens(tokens: list[str]) -> int:
    """Value of a token sequence (parentheses removed): MED = int(median), SM = sum mod 10."""
    stack: list[list] = []
    value = None
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            op, *args = stack.pop()
            value = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)),
                     "[SM": lambda a: sum(a) % 10}[op](args)
            if stack:
                stack[-1].append(value)
        else:
            value = int(tok)
            if stack:
                stack[-1].append(value)
    if stack or value is None:
        raise ValueError(f"unbalanced ListOps expression: {' '.join(tokens[:20])} ...")
    return value


def source_tokens(source: str) -> list[str]:
    """§4.2: delete the parentheses, whitespace split (``]`` stays our END token)."""
    return [t for t in source.replace("(", " ").replace(")", " ").split()]


def generate(seed: int = 0, n_train: int = 96_000, n_val: int = 2_000, n_test: int = 2_000, min_len: int = 500,
             max_len: int = 2_000, max_depth: int = 10, max_args: int = 10, max_tries: int | None = None):
    """-> {split: [(source, label)]}: unique trees with ``min_len < length < max_len``."""
    rng, need = random.Random(seed), n_train + n_val + n_test
    kept: dict = {}
    tries, max_tries = 0, max_tries or 10_000 * need + 1_000_000
    bar = progress(total=need, desc="ListOps trees", unit="tree")
    while len(kept) < need:
        tries += 1
        if tries > max_tries:
            bar.close()
            raise RuntimeError(f"ListOps generator: only {len(kept)} of {need} unique trees with {min_len} < length "
                               f"< {max_len} after {max_tries} draws; widen the length range")
        tree, length = generate_tree(rng, 1, max_depth, max_args)
        if min_len < length < max_len and tree not in kept:
            kept[tree] = None
            bar.update(1)
    bar.close()
    rows = []
    for tree in kept:
        src = to_string(tree)
        rows.append((src, evaluate_tokens(source_tokens(src))))
    return {"train": rows[:n_train], "val": rows[n_train:n_train + n_val], "test": rows[n_train + n_val:]}


def write_tsv(path: Path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("Source\tTarget\n")
        for src, label in rows:
            f.write(f"{src}\t{label}\n")


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    sources, labels = [], []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["Source", "Target"]:
            raise ValueError(f"{path}: expected the LRA header 'Source<TAB>Target', got {header}")
        for line in f:
            if line.strip():
                src, label = line.rstrip("\n").split("\t")
                sources.append(src)
                labels.append(int(label))
    return sources, labels


def encode(sources: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (tokens uint8 [N, max_len] right-padded with 0, lengths int32 [N]); longer inputs are truncated."""
    out = np.zeros((len(sources), max_len), np.uint8)
    lengths = np.zeros(len(sources), np.int32)
    for i, src in enumerate(sources):
        ids = [VOCAB[t] for t in source_tokens(src)][:max_len]
        out[i, :len(ids)] = ids
        lengths[i] = len(ids)
    return out, lengths


def generated_dir(root: str | Path, **params) -> Path:
    name = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    return Path(root) / "lra" / "listops_generated" / name


def prepare_generated(root: str | Path, seed: int = 0, **params) -> Path:
    """Generate once into ``<root>/lra/listops_generated/<params>/basic_*.tsv`` (atomic; reused after) with
    ``meta.json`` recording their sizes and sha256; damaged or unrecorded files are generated again."""
    out = generated_dir(root, seed=seed, **params)
    paths = {s: out / f"basic_{s}.tsv" for s in SPLITS}
    source = json.loads(json.dumps({"kind": "listops_generated", "seed": seed, **params}, sort_keys=True))
    if check_prepared(out / "meta.json", 1, source, lambda meta: split_entries(meta, paths),
                      lambda: f"the ListOps generator (seed {seed})", f"delete {out} and run again") is not None:
        return out
    (out / "meta.json").unlink(missing_ok=True)   # never vouch for files being replaced
    data = generate(seed=seed, **params)
    for s in SPLITS:
        write_tsv(paths[s], data[s])
    splits = {s: {"file": p.name, "n_bytes": p.stat().st_size, "sha256": sha256_file(p)} for s, p in paths.items()}
    atomic_write_bytes(out / "meta.json", json.dumps({"version": 1, "source": source, "splits": splits}).encode())
    return out


__all__ = ["OPERATORS", "VOCAB", "VOCAB_SIZE", "encode", "evaluate_tokens", "generate", "generate_tree",
           "prepare_generated", "read_tsv", "source_tokens", "to_string", "write_tsv"]
