"""Experiments: sweeps (``reproduce``), typed run records, tables whose columns are data, paired
statistics, count-model baselines, curves, and the methods and positions tables."""
