"""MLflow and Weights & Biases loggers that work without a network and resume their own run.

* `MLFlowLogger` logs to a local file store in the run folder (`<run>/mlruns`) unless a tracking URI
  is given; `WandbLogger` runs offline unless told otherwise (`wandb sync <run>/wandb/offline-run-*`
  uploads later). Telemetry is switched off for both.
* A fit resumed from the run folder's checkpoint (`ckpt_path=last`) appends to the same tracking run:
  the run id is kept in `<run>/<kind>_run_id` when the run is created, and `resume_runs` hands it
  back before the resumed fit starts. A fresh fit in the same folder starts a new run.
* `log_run_files` logs the final `metrics.json` and the figures as artifacts of the run.

Both packages are optional extras (`pip install 'icolightning[mlflow]'` / `'icolightning[wandb]'`):
without them the logger stops with one line naming the extra.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from icolightning.errors import UsageError

OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "WANDB_DISABLE_GIT": "true"}
"""Set (unless already set) when a tracking logger is made: no usage statistics leave the machine."""


def require(module: str, extra: str, logger: str) -> None:
    """Stop with one line naming the extra when the optional tracking package is missing."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"logger={logger} needs the {module} package: pip install 'icolightning[{extra}]'")


class RememberedRun:
    """The tracking run's id, kept in `<run folder>/<kind>_run_id` so a resumed fit finds it."""

    kind = ""

    def _init_run_file(self, run_dir: str | os.PathLike) -> None:
        self.run_file = Path(run_dir) / f"{self.kind}_run_id"

    def stored_run_id(self) -> str | None:
        return self.run_file.read_text().strip() or None if self.run_file.is_file() else None

    def remember(self, run_id: str | None) -> None:
        if run_id and self.stored_run_id() != run_id:
            self.run_file.parent.mkdir(parents=True, exist_ok=True)
            self.run_file.write_text(run_id + "\n")


class MLFlowLogger(RememberedRun, LightningMLFlowLogger):
    """Lightning's MLFlowLogger with a file store in the run folder by default and a resumable run id."""

    kind = "mlflow"

    def __init__(self, save_dir: str | os.PathLike, tracking_uri: str | None = None, **kwargs: Any) -> None:
        require("mlflow", "mlflow", "mlflow")
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        if tracking_uri is None:
            tracking_uri = (Path(save_dir) / "mlruns").resolve().as_uri()
            # MLflow 3 refuses the file store unless asked; it is the one local store mlflow-skinny has.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(tracking_uri=tracking_uri, save_dir=str(save_dir), **kwargs)
        self._init_run_file(save_dir)

    def resume_run(self) -> None:
        """Log into the run this folder's earlier fit created (before the experiment is first used)."""
        self._run_id = self._run_id or self.stored_run_id()

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        client = super().experiment
        self.remember(self._run_id)
        return client

    @rank_zero_only
    def log_run_files(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.experiment.log_artifact(self.run_id, str(path))


class WandbLogger(RememberedRun, LightningWandbLogger):
    """Lightning's WandbLogger, offline by default, with a run id chosen here so a resume can reuse it."""

    kind = "wandb"

    def __init__(self, save_dir: str | os.PathLike, offline: bool = True, id: str | None = None,
                 **kwargs: Any) -> None:
        require("wandb", "wandb", "wandb")
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        if offline:
            os.environ["WANDB_MODE"] = "offline"
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(save_dir=str(save_dir), offline=offline, id=id or secrets.token_hex(4), **kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb; None would only warn
        self._init_run_file(save_dir)

    def resume_run(self) -> None:
        """Log into the run this folder's earlier fit created (before the experiment is first used)."""
        stored = self.stored_run_id()
        if stored and self._experiment is None:
            self._id = self._wandb_init["id"] = stored

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        run = super().experiment
        self.remember(getattr(run, "id", None))
        return run

    @rank_zero_only
    def log_run_files(self, paths: Iterable[Path]) -> None:
        """Copy the files into the run (uploaded by `wandb sync` when offline) and end the run."""
        for path in paths:
            self.experiment.save(str(path), base_path=str(Path(path).parent), policy="now")
        self.experiment.finish()


def resume_runs(loggers: Iterable[Any]) -> None:
    """Before a fit that resumes this run folder: every tracking logger continues its earlier run."""
    for logger in loggers:
        if hasattr(logger, "resume_run"):
            logger.resume_run()


def log_run_files(loggers: Iterable[Any], paths: Iterable[Path]) -> None:
    """The run's final files (metrics.json, figures) as artifacts of every tracking logger."""
    paths = [p for p in paths if p.is_file()]
    for logger in loggers:
        if hasattr(logger, "log_run_files"):
            logger.log_run_files(paths)
