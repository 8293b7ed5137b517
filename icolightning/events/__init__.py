"""Events on the icosahedral vertices: connected regions of one class tracked through time
(`find_events`), their label files and their figures."""

from icolightning.events.tracking import (
    EARTH_RADIUS_KM,
    EVENT_COLUMNS,
    DetectionCounts,
    EventTracker,
    default_max_gap_hours,
    detection_counts,
    events_frame,
    find_events,
    great_circle_km,
    summarize_tracks,
)

__all__ = [
    "EARTH_RADIUS_KM",
    "EVENT_COLUMNS",
    "DetectionCounts",
    "EventTracker",
    "default_max_gap_hours",
    "detection_counts",
    "events_frame",
    "find_events",
    "great_circle_km",
    "summarize_tracks",
]
