"""Metrics: pure functions plus dataset-level accumulators; no hidden sigmoid (see docs/metrics.md).

Binary (S4, MS3): :mod:`avseg.metrics.binary`; semantic (AVSS): :mod:`avseg.metrics.semantic`;
localisation (EZ-VSL heat maps): :mod:`avseg.metrics.localization`; multi-label classification (PCAS's
audio and visual heads): :mod:`avseg.metrics.classification`.
"""

from __future__ import annotations

from avseg.metrics.binary import (
    PROTOCOLS,
    BinaryAccumulator,
    avsbench_batch_fscore,
    avsbench_batch_miou,
    avsbench_frame_iou,
    frame_iou_clean,
    per_frame_max_fscore,
)
from avseg.metrics.localization import LocalizationAccumulator, auc_from_cious, ciou
from avseg.metrics.semantic import SEMANTIC_PROTOCOLS, SemanticAccumulator

__all__ = [
    "PROTOCOLS",
    "SEMANTIC_PROTOCOLS",
    "BinaryAccumulator",
    "SemanticAccumulator",
    "LocalizationAccumulator",
    "avsbench_batch_fscore",
    "avsbench_batch_miou",
    "avsbench_frame_iou",
    "frame_iou_clean",
    "per_frame_max_fscore",
    "ciou",
    "auc_from_cious",
]
