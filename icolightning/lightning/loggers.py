"""Loggers whose history survives a resume.

A resumed run (`ckpt_path=last`) logs into the same fixed version folder as the run it resumes
(`version: ""` in conf/logger/). TensorBoard then adds an event file next to the earlier ones, but
Lightning's CSVLogger deletes `metrics.csv` when it starts and rewrites the file with only the keys
it has seen itself. `CSVLogger` here keeps the file: the writer starts from its header and appends.
Steps logged between the last checkpoint and the interruption are logged again by the resumed run,
so they appear twice (the later row is the resumed run's).
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer without the deletion of an existing metrics.csv, whose columns it keeps."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, appending to the metrics.csv of its folder instead of replacing it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
