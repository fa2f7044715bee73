"""Benchmarks: uow beside SQLAlchemy's AsyncSession and the raw drivers.

Run every case in one process with ``python -m bench`` (or
``python bench/run.py``); ``--help`` lists the options. Results are printed as
a table and written to ``bench/results/latest.json``. See
``docs/performance.md`` for what is measured and the targets.
"""
