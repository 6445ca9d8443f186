"""Runs -> tables -> plots (``python -m vqformer.results``; ``make results``).

``collect`` reads finished runs (local run directories, or a W&B project), ``tables`` turns them into one
table per experiment group (mean and spread over seeds), ``plots`` draws one figure per comparison.
"""
