"""Event-level detection scores as a torchmetrics Metric (POD and FAR per event class).

Events and the overlap rule are those of `icolightning.events.tracking.detection_counts`: connected
regions of one class on the vertex graph, a true event detected when a vertex of it is predicted
as its class, a predicted event a false alarm when none of its vertices has that class in the
truth. Every sample is one time step. The state is four integer counts per class, summed across
DDP ranks, so N processes report what one process reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from icolightning.classes import CLIMATE_CLASSES, EVENT_CLASSES
from icolightning.events.tracking import detection_counts
from icolightning.grid import level_of

EVENT_COUNTS: tuple[str, ...] = ("true_events", "detected", "predicted_events", "false_alarms")
"""The summed counts behind POD and FAR, reported per event class as `<count>_<class>`."""

class EventDetection(Metric):
    """``compute()`` gives ``event_pod_<c>`` and ``event_far_<c>`` (NaN when undefined) and the
    counts ``true_events_<c>``, ``detected_<c>``, ``predicted_events_<c>``, ``false_alarms_<c>``."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, class_names: Sequence[str] = CLIMATE_CLASSES, event_classes: Sequence[str] = EVENT_CLASSES,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.event_classes = tuple(event_classes)
        self.class_ids = tuple(list(class_names).index(name) for name in self.event_classes)
        self.add_state("counts", torch.zeros(4, len(self.event_classes), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and true class ids [B, N] (one time step per sample)."""
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, N]")
        level = level_of(pred.shape[-1])
        counts = detection_counts(pred.cpu().numpy(), target.cpu().numpy(), level, self.class_ids)
        stacked = np.stack([counts.true_events, counts.detected, counts.predicted_events, counts.false_alarms])
        self.counts += torch.as_tensor(stacked, dtype=torch.long, device=self.counts.device)

    def compute(self) -> dict[str, Tensor]:
        true, detected, predicted, false = self.counts.double()
        out: dict[str, Tensor] = {}
        for i, name in enumerate(self.event_classes):
            out[f"event_pod_{name}"] = detected[i] / true[i] if true[i] > 0 else torch.tensor(float("nan"))
            out[f"event_far_{name}"] = false[i] / predicted[i] if predicted[i] > 0 else torch.tensor(float("nan"))
            for row, key in enumerate(EVENT_COUNTS):
                out[f"{key}_{name}"] = self.counts[row, i].clone()
        return out
