"""The ``debug`` group (conf/debug/*.yaml) has no node of its own: each mode is a ``@package _global_``
overlay applied last, so every key it sets is typed and range-checked by the group that owns it
(``trainer.*`` in schema/trainer.py, ``data.*`` in schema/data.py, top-level keys in schema/train.py).

Modes: ``fast`` (a few steps of everything), ``overfit`` (train on one batch: the loss must fall towards
zero), ``limit`` (few training and validation batches per epoch), ``profile`` (Lightning's simple profiler,
its report printed at the end).
"""
MODES = ("fast", "overfit", "limit", "profile")
