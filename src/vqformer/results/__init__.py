"""Every table and plot the repository publishes, one module per table family (``python -m vqformer.results
<family>``; see ``__main__``): ``mini`` (language-model tables: ``collect`` reads finished runs from run
directories or a W&B project, ``tables`` makes one table per experiment group, ``plots`` one figure per
comparison), ``recall``, ``lra`` / ``lra_baseline``, ``throughput``, ``expected`` (finished runs inside or
outside their row's band). What the papers report, and what a full run of each row should reach
(``paper.EXPECTED``), is in ``paper``.
"""
