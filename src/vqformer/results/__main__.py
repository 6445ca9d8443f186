"""``python -m vqformer.results <family> [...]``: one table family per module; ``--help`` after a family
lists its options. Without a family the language-model tables are built (``mini``).

    mini          mini ablations and enwik8 tables (results/mini.py)           make results
    recall        MQAR / passkey recall table and plot (results/recall.py)     make recall
    lra           LRA validation curve of one run (results/lra.py)
    lra-baseline  bag-of-tokens baselines of an LRA task (results/lra_baseline.py)
    throughput    throughput tables and plots from a benchmark record (results/throughput.py)
    parity        our curve against the official tiny configuration's (results/parity.py)
    expected      finished full-size runs inside / outside their expected band (results/expected.py)
    longctx       bits per byte against context (results/longctx.py)           make longctx
    mechanism     compressive-cache mechanism experiment (results/mechanism.py)  make repro-mechanism

New output goes to ``logs/results/<family>/`` unless ``--out`` says otherwise; the committed pages under
``experiments/`` change only through ``make refresh-results`` / ``make refresh-bench``.
"""
from __future__ import annotations

import importlib
import sys

FAMILIES = {"mini": "mini", "recall": "recall", "lra": "lra", "lra-baseline": "lra_baseline",
            "throughput": "throughput", "parity": "parity", "expected": "expected", "longctx": "longctx",
            "mechanism": "mechanism"}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    family = argv.pop(0) if argv and not argv[0].startswith("-") else "mini"
    if family not in FAMILIES:
        raise SystemExit(f"unknown results family {family!r}; choose one of: {', '.join(FAMILIES)}")
    importlib.import_module(f".{FAMILIES[family]}", __package__).main(argv)


if __name__ == "__main__":
    main()
