"""Command line for preparing byte corpora (transformer_vq.md §4.3).

    python -m vqformer.data.prepare enwik8 --root data
    python -m vqformer.data.prepare generated --root data --n-bytes 1000000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys

from .bytes_corpus import CORPORA, GENERATED_DEFAULT_BYTES, META_NAME, prepare
from .files import DataIntegrityError, DataUnavailableError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqformer.data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=list(CORPORA))
    parser.add_argument("--root", default="data", help="folder for prepared corpora (default: data)")
    parser.add_argument("--n-bytes", type=int, default=GENERATED_DEFAULT_BYTES, help="generated only")
    parser.add_argument("--seed", type=int, default=0, help="generated only")
    parser.add_argument("--verify", action="store_true", help="re-hash existing split files instead of trusting sizes")
    parser.add_argument("--offline", action="store_true", help="enwik8: never try to download the zip")
    args = parser.parse_args(argv)

    kw: dict = {"verify": args.verify}
    if args.name == "generated":
        kw.update(n_bytes=args.n_bytes, seed=args.seed)
    if args.name == "enwik8":
        kw["allow_download"] = not args.offline
    try:
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
