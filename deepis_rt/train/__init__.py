"""Training DeepIS networks: edge-weighted L1 on signed distance maps, synthetic or annotated data."""

from deepis_rt.train.data import (
    HELDOUT_SEED_BASE,
    VALIDATION_SEED_BASE,
    FolderSource,
    SyntheticSource,
    distance_from_labels,
    edge_weight,
    random_crop_batch,
)
from deepis_rt.train.loop import (
    TrainConfig,
    evaluate_frames,
    predict_distance,
    state_path,
    train,
    validation_frames,
)
from deepis_rt.train.metrics import dice, frame_metrics, is_area_um2, masks_from_distance, summarize

__all__ = [
    "train",
    "TrainConfig",
    "state_path",
    "predict_distance",
    "evaluate_frames",
    "validation_frames",
    "SyntheticSource",
    "FolderSource",
    "edge_weight",
    "distance_from_labels",
    "random_crop_batch",
    "masks_from_distance",
    "dice",
    "is_area_um2",
    "frame_metrics",
    "summarize",
    "VALIDATION_SEED_BASE",
    "HELDOUT_SEED_BASE",
]
