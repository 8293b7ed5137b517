"""A one-cycle schedule whose warm-up would be zero steps long is refused before the first step
(torch's OneCycleLR divides by that length mid-run), on a fresh run and on a resume alike; a
schedule changed since the checkpoint is refused on resume instead of being silently ignored."""

from __future__ import annotations

import pytest
import torch

from icolightning.errors import UsageError
from icolightning.lightning.schedule import (
    ScheduleTooShortError,
    build_scheduler,
    extend_scheduler,
    refuse_changed_schedule,
)

ONE_CYCLE = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.1, "pct_start": 0.2}


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_zero_step_warm_up_is_refused_with_the_option_named():
    with pytest.raises(ScheduleTooShortError, match=r"model.scheduler.pct_start=0.2 over 5 steps"):
        build_scheduler(ONE_CYCLE, _optimizer(), 5, "steps")


def test_a_warm_up_of_one_step_runs_to_the_end():
    optimizer = _optimizer()
    scheduler = build_scheduler(ONE_CYCLE, optimizer, 10, "steps")
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert scheduler.last_epoch == 10


def test_resume_onto_a_zero_step_warm_up_is_refused():
    scheduler = build_scheduler(ONE_CYCLE, _optimizer(), 4, "steps")
    scheduler.optimizer.step()
    scheduler.step()
    with pytest.raises(ScheduleTooShortError):
        extend_scheduler(scheduler, ONE_CYCLE, 5)


def test_a_schedule_changed_since_the_checkpoint_is_refused_with_the_options_named():
    refuse_changed_schedule(ONE_CYCLE, dict(ONE_CYCLE))  # unchanged: fine
    refuse_changed_schedule(None, None)
    named = r"model\.scheduler\.div_factor=None -> 5.*model\.scheduler\.max_lr=0\.1 -> 0\.2"
    with pytest.raises(UsageError, match=named):
        refuse_changed_schedule(ONE_CYCLE, {**ONE_CYCLE, "max_lr": 0.2, "div_factor": 5})
