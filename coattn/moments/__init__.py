"""Audio moment retrieval: find *where* in a long recording a query happens (torch only).

    metrics   Moment-DETR / Lighthouse evaluation (R1@θ, mAP@θ, mAP@0.5:0.95)
    windows   seconds <-> frames, temporal NMS, sliding windows over long recordings
    head      per-frame relevance + boundary offsets on the cascade's text-conditioned audio stream
"""
from coattn.moments.metrics import moment_metrics

__all__ = ["moment_metrics"]
