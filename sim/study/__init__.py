"""Studies built on the model: sweeps, their executors and result store, statistics, figures.

:mod:`~sim.study.sweepfile` expands a sweep file into points and seeded tasks;
:mod:`~sim.study.executors` runs them (serially, on a process pool, or on dask);
:mod:`~sim.study.store` keeps finished runs for resume; :mod:`~sim.study.tables` and
:mod:`~sim.study.stats` make the CSVs; :mod:`~sim.study.plot` draws figures from the CSVs
alone; :mod:`~sim.study.sweep` ties them together. Imports :mod:`sim.model` and below.
"""
