"""Fill a run's CT noise cache with several processes before the first training step.

The projection-domain noise simulation costs ~10 s per 512x512 slice (sinogram plus one
filtered back-projection per realisation) and runs on the CPU. Done lazily, as training first
draws each slice, it holds the first minutes of a run on one core; on a GPU machine lent for
ten minutes that is most of the run. With ``[train] prefill_workers = N`` every training
slice's noise is simulated up front by N spawned processes, one slice (all its realisations)
per job so each sinogram is computed once. The cache files are the ones the lazy path writes (same
seeds, same names): a prefilled run and a lazy run train on identical noise.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Sequence

import numpy as np

from training.data import SeriesData
from training.tasks import Task

log = logging.getLogger(__name__)

_TASK: Task | None = None


def _init(task: Task) -> None:
    global _TASK
    _TASK = task


def _fill(job: tuple[str, int, np.ndarray, float]) -> int:
    """All noise realisations of one slice (written to the cache by the task itself)."""
    assert _TASK is not None
    key, index, image, spacing = job
    for dose, realisation in _TASK.ct_noise_keys():
        _TASK.ct_slice_noise(key, index, image, spacing, dose, realisation)
    return len(_TASK.ct_noise_keys())


def prefill_ct_noise(task: Task, series: Sequence[SeriesData], workers: int) -> int:
    """Simulate every training slice's cached CT noise with ``workers`` processes.

    Returns the number of realisations now in the cache for these slices. A no-op for other
    degradations and without a cache folder. Slices already cached cost only a file check.
    The processes are spawned, not forked: a fork of a process with threads (torch's, a
    logging or a test server's) can inherit a held lock and hang, as it did in the test suite.
    Each job carries its one slice, so nothing else of the series is copied.
    """
    if task.kind != "ct_low_dose" or task.cache_dir is None or workers < 1:
        return 0
    jobs = [(s.key, i, s.slices[i], task.slice_spacing(s)) for s in series
            for i in range(len(s.slices))
            if not all(task.ct_noise_cached(s, i, d, r) for d, r in task.ct_noise_keys())]
    total = sum(len(s.slices) for s in series) * len(task.ct_noise_keys())
    if not jobs:
        return total
    began = time.monotonic()
    log.info("prefilling CT noise: slices=%d workers=%d", len(jobs), workers)
    fresh = dataclasses.replace(task, _noise_cache={}, _sinograms={})  # nothing big to pickle
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs)), initializer=_init, initargs=(fresh,)) as pool:
        for _ in pool.imap_unordered(_fill, jobs):
            pass
    log.info("prefilled CT noise: slices=%d seconds=%.0f", len(jobs),
             time.monotonic() - began)
    return total
