"""Metrics over a whole evaluation set, synced across DDP ranks: climate segmentation (accuracy,
AP, IoU) and event-level detection."""

from icolightning.metrics.events import EventDetection
from icolightning.metrics.segmentation import ClimateMetrics

__all__ = ["ClimateMetrics", "EventDetection"]
