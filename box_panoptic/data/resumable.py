# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""A training data stream that resumes exactly where it stopped.

detectron2's ``TrainingSampler`` starts its stream over on ``--resume``, and augmentations draw
from each loader worker's global RNG, so a resumed run trains on other samples than an
uninterrupted one. Here the whole stream is a pure function of (seed, iteration):

* global sample position p of epoch e = p // n is entry p % n of a permutation drawn from a
  generator seeded with (seed, e); rank r of W takes the positions p = r (mod W);
* each rank groups its positions into batches by aspect ratio (landscape / portrait, from the
  records' width and height, so without reading an image), as detectron2's
  ``AspectRatioGroupedDataset`` does after loading; resuming at iteration i skips exactly the
  first i batches;
* loader worker w of K maps batches w, w + K, ..., so the loader yields them in order;
* before mapping, numpy's, Python's and torch's RNGs are seeded with (seed, position): the
  augmentations of a sample do not depend on which worker, run or restart maps it.

A bad sample that the mapper skips (``INPUT.BAD_SAMPLE_POLICY: skip``) is replaced by the next
record of the dataset (same position seed), and recorded in ``skip_log`` (one JSON line per skip,
appended by whichever process skips it) so that the trainer can report one total over every
worker and process.
"""

import itertools
import json
import logging
import os
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils import data

from detectron2.data.build import trivial_batch_collator
from detectron2.utils import comm

from .worker_lifecycle import WorkerStopFlag

__all__ = [
    "ResumableTrainStream",
    "ResumableTrainLoader",
    "build_resumable_train_loader",
    "sample_seed",
    "count_skipped",
]

logger = logging.getLogger("detectron2." + __name__)  # shown by detectron2's logger setup


def sample_seed(seed: int, position: int) -> int:
    """The RNG seed of the sample at global ``position`` of a stream seeded with ``seed``."""
    return (seed * 1_000_003 + position * 7919 + 17) % (2**32)


def count_skipped(skip_log: str) -> int:
    """Distinct skipped (position, file) pairs recorded in ``skip_log`` (0 if absent). A sample
    replayed after a restart is counted once."""
    if not skip_log or not os.path.exists(skip_log):
        return 0
    seen = set()
    with open(skip_log) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            seen.add((r.get("position"), r.get("file")))
    return len(seen)


class ResumableTrainStream(data.IterableDataset):
    """Mapped training samples of one rank, in batches of ``batch_size``, from ``start_iter``.

    Args:
        records: the dataset's detectron2 dicts (with "width" and "height").
        mapper: callable dict -> dict, or None for a sample to skip.
        batch_size: images per batch on this rank.
        seed: stream seed (the same on every rank).
        start_iter: the first iteration to produce (batches before it are skipped unread).
        aspect_ratio_grouping: batch landscape and portrait images apart.
        skip_log: file to append skipped samples to, or None.
    """

    def __init__(
        self,
        records: Sequence[Dict],
        mapper: Callable[[Dict], Optional[Dict]],
        batch_size: int,
        seed: int,
        start_iter: int = 0,
        aspect_ratio_grouping: bool = True,
        skip_log: Optional[str] = None,
    ):
        if not records:
            raise ValueError("ResumableTrainStream: the training dataset is empty")
        self.records = list(records)
        self.mapper = mapper
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_iter = int(start_iter)
        self.skip_log = skip_log
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.group = [
            int(aspect_ratio_grouping and r.get("width", 1) > r.get("height", 1))
            for r in self.records
        ]

    def _positions(self) -> Iterator[tuple]:
        """(global position, record index) of this rank, forever."""
        n = len(self.records)
        for epoch in itertools.count():
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g).tolist()
            first = epoch * n
            for offset in range((self.rank - first) % self.world_size, n, self.world_size):
                yield first + offset, perm[offset]

    def batches(self) -> Iterator[List[tuple]]:
        """This rank's batches of (position, record index), from iteration 0, forever."""
        buckets: Dict[int, List[tuple]] = {0: [], 1: []}
        for position, index in self._positions():
            bucket = buckets[self.group[index]]
            bucket.append((position, index))
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()

    def _map(self, position: int, index: int) -> Dict:
        n = len(self.records)
        for attempt in range(n):
            s = sample_seed(self.seed, position)
            np.random.seed(s)
            random.seed(s)
            torch.manual_seed(s)
            record = self.records[(index + attempt) % n]
            out = self.mapper(record)
            if out is not None:
                return out
            self._log_skip(position, record)
        raise RuntimeError(f"every one of the {n} training samples was skipped as bad")

    def _log_skip(self, position: int, record: Dict) -> None:
        if not self.skip_log:
            return
        line = json.dumps({"position": position, "file": record.get("file_name")}) + "\n"
        # one short O_APPEND write per line: lines from several processes do not interleave
        fd = os.open(self.skip_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def __iter__(self) -> Iterator[Dict]:
        info = data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batches = itertools.islice(self.batches(), self.start_iter, None)
        for k, batch in enumerate(batches):
            if k % workers == worker:
                for position, index in batch:
                    yield self._map(position, index)

    def loader(self, num_workers: int, worker_init_fn=None) -> data.DataLoader:
        """A DataLoader yielding this rank's batches (lists of dicts) in order."""
        return data.DataLoader(
            self,
            batch_size=self.batch_size,
            num_workers=num_workers,
            collate_fn=trivial_batch_collator,
            worker_init_fn=worker_init_fn,
        )


class ResumableTrainLoader:
    """The trainer's data loader: an iterable that builds its :class:`ResumableTrainStream` on
    the first ``next``, after ``resume_or_load`` has set ``start_iter`` and restored ``seed``.

    Its loader workers keep working through a SIGTERM to the process group (the trainer saves
    first) and stop as soon as the trainer stops (:mod:`.worker_lifecycle`).

    Also a checkpointable (``state_dict`` holds the stream seed), so that a run with a random
    seed (``SEED: -1``) resumes the same stream.
    """

    def __init__(
        self, make_stream: Callable[[int, int], ResumableTrainStream], seed: int, num_workers: int
    ):
        self.make_stream = make_stream
        self.seed = int(seed)
        self.start_iter = 0
        self.num_workers = int(num_workers)
        self._stop: Optional[WorkerStopFlag] = None
        self._iterator = None

    def __iter__(self) -> Iterator[List[Dict]]:
        stream = self.make_stream(self.seed, self.start_iter)
        logger.info(
            f"Training data stream: seed {self.seed}, from iteration {self.start_iter}, "
            f"{self.num_workers} loader workers"
        )
        self.close()  # a second iteration replaces the first one's workers
        self._stop = WorkerStopFlag()
        self._iterator = iter(stream.loader(self.num_workers, self._stop.worker_init))
        try:
            yield from self._iterator
        finally:
            self.close()

    def close(self) -> None:
        """Stop the loader workers now (idempotent). The trainer calls it when training ends,
        normally or by an exception, so that no worker delays the process's exit."""
        if self._stop is not None:
            self._stop.set()
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's multi-worker iterator
        if shutdown is not None:
            shutdown()

    def state_dict(self) -> Dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: Dict) -> None:
        self.seed = int(state["seed"])


def build_resumable_train_loader(
    *,
    dataset: Sequence[Dict],
    mapper: Callable[[Dict], Optional[Dict]],
    total_batch_size: int,
    seed: int = -1,
    num_workers: int = 0,
    aspect_ratio_grouping: bool = True,
    skip_log: Optional[str] = None,
) -> ResumableTrainLoader:
    """The training loader that resumes exactly (the yacs Trainer's, and a LazyConfig's
    ``dataloader.train``).

    Args:
        dataset: the records (:func:`~box_panoptic.data.loading.load_panoptic_dicts`).
        mapper: record -> model input, or None for a sample skipped as bad.
        total_batch_size: images per iteration over all processes.
        seed: the stream's seed; negative: one drawn and shared by every process.
        skip_log: the JSON-lines file that records skipped samples (None: nowhere).
    """
    world = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world:
        raise ValueError(
            f"total batch size {total_batch_size} must be a positive multiple of the "
            f"{world} processes"
        )
    records = list(dataset)

    def make_stream(stream_seed: int, start_iter: int) -> ResumableTrainStream:
        return ResumableTrainStream(
            records,
            mapper,
            total_batch_size // world,
            stream_seed,
            start_iter,
            aspect_ratio_grouping,
            skip_log,
        )

    seed = seed if seed >= 0 else comm.shared_random_seed()
    return ResumableTrainLoader(make_stream, seed, num_workers)
