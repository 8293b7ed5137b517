"""Learning-rate schedules whose horizon follows the trainer, also across a resume with another length.

The horizon argument of a scheduler (`total_steps`, `T_max`, `total_iters`) is filled in from the
trainer when the config leaves it out. A checkpoint stores the horizon of the run that wrote it, so
a resume with a changed `trainer.max_epochs` / `max_steps` would step past it (OneCycleLR raises
mid-run). The rule: after the restore, a trainer-filled horizon that differs from the new one is
rebuilt with the new horizon, keeping the steps already done (the constructor's `last_epoch`), so
the rest of the run follows the new schedule from the current step on. A horizon fixed in the
config is the user's: a run longer than it is refused before its first step.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import hydra
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

from icolightning.errors import UsageError

HORIZON_ARGS = ("total_steps", "T_max", "total_iters")
"""Constructor arguments that set a scheduler's horizon, in the order they are looked for."""


class ScheduleTooShortError(SystemExit):
    """A horizon fixed in the config ends before the run does (exits with its one-line message)."""


def horizon_argument(target: str) -> str | None:
    """The horizon argument of the scheduler class `target`, or None if it has none."""
    params = inspect.signature(hydra.utils.get_class(target)).parameters
    return next((name for name in HORIZON_ARGS if name in params), None)


def _check_warm_up(cfg: Mapping[str, Any], total_steps: int) -> None:
    """torch's OneCycleLR divides by the warm-up's length, pct_start·total_steps - 1 steps, mid-run:
    refuse a run where that is zero before its first step."""
    if not issubclass(hydra.utils.get_class(cfg["_target_"]), OneCycleLR):
        return
    pct_start = float(cfg.get("pct_start", inspect.signature(OneCycleLR).parameters["pct_start"].default))
    if float(pct_start * total_steps) - 1 == 0:
        raise ScheduleTooShortError(
            f"model.scheduler.pct_start={pct_start} over {total_steps} steps gives OneCycleLR a warm-up of zero "
            f"steps (torch then divides by zero mid-run): train for more steps or change pct_start"
        )


def build_scheduler(cfg: Mapping[str, Any], optimizer: Optimizer, horizon: int, unit: str) -> LRScheduler:
    """Instantiate `cfg` on `optimizer`, its horizon filled in with `horizon` (steps or epochs) unless
    the config fixes it; a fixed horizon shorter than the run raises ScheduleTooShortError."""
    cfg = dict(cfg)
    name = horizon_argument(cfg["_target_"])
    if name is not None and name in cfg and int(cfg[name]) < horizon:
        raise ScheduleTooShortError(
            f"model.scheduler.{name}={cfg[name]} ends before the run does ({horizon} {unit}): remove "
            f"model.scheduler.{name} to follow the trainer's horizon, or set it to at least {horizon}"
        )
    if name is not None and name not in cfg:
        cfg[name] = int(horizon)
    if name == "total_steps":
        _check_warm_up(cfg, int(cfg[name]))
    return hydra.utils.instantiate(cfg, optimizer=optimizer)


def extend_scheduler(scheduler: LRScheduler, cfg: Mapping[str, Any], horizon: int) -> LRScheduler:
    """The restored `scheduler` with its trainer-filled horizon moved to `horizon`, steps kept.

    Returns `scheduler` itself when the horizon is fixed in the config, already equal, or when no
    step remains; otherwise a new scheduler built with the new horizon at the current step (the
    optimiser's learning rates are set to the new schedule's value there).
    """
    name = horizon_argument(cfg["_target_"])
    done = scheduler.last_epoch
    if name is None or name in cfg or getattr(scheduler, name) == horizon or done >= horizon:
        return scheduler
    if name == "total_steps":
        _check_warm_up(cfg, horizon)
    return hydra.utils.instantiate({**cfg, name: int(horizon)}, optimizer=scheduler.optimizer, last_epoch=done - 1)


def refuse_changed_schedule(saved: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> None:
    """A resume restores the scheduler's state, so a schedule argument changed since the checkpoint
    (OneCycleLR's max_lr or div_factor, say) would be silently ignored: refuse it, naming the options.
    Horizon arguments filled in from the trainer are not in either config and follow the new run."""
    saved, current = dict(saved or {}), dict(current or {})
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        listed = ", ".join(f"model.scheduler.{k}={saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise UsageError(
            f"the scheduler config changed since the checkpoint ({listed}); a resumed schedule continues the "
            "checkpoint's, so the change would be ignored: resume with the checkpoint's values, or start a new "
            "run from its weights")
