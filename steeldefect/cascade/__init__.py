"""The paper's cascade made usable: stage 1 → stage 2 → stage 3 → area filter (Section 3).

``Cascade.predict(image)`` runs an image through the binary classifier (defect or not), the multi-label
classifier (which classes) for images predicted defective, the segmentation model of each class predicted
present, and the area filter (``thresholds``), and says for each class why it was kept or dropped.
``steeldefect.cascade.predict(image)`` does the same with the default cascade (``$STEELDEFECT_CASCADE`` or the
latest experiments run). ``python -m steeldefect.cascade`` predicts from the command line.
``Cascade.export`` writes the whole cascade as one SavedModel that needs TensorFlow only (or TFLite stages that
``TFLiteCascade`` runs); ``python -m steeldefect.cascade export`` does it from the command line.

The package's rooms, each importing only those above it:

- ``core``: ``Cascade`` (decision and prediction, ``cascade.json``), ``CascadeResult``, the default cascade;
- ``export``: one SavedModel, or TFLite stages run by ``TFLiteCascade``;
- ``evaluation``: Kaggle mean Dice and the stages' scores on a split or a folder;
- ``outputs``: folders predicted in batches, submission files, overlays;
- ``cli``: the command line (``__main__``).
"""

from .cli import main
from .core import (
    ABSENT,
    DECISION_CODES,
    EMPTY,
    GATINGS,
    KEPT,
    NO_DEFECT,
    TTA_FLIPS,
    Cascade,
    CascadeError,
    CascadeResult,
    default_cascade_path,
    load_default,
    predict,
    read_image,
)
from .evaluation import evaluate_cascade, evaluate_folder, validation_dice, validation_summary
from .export import (
    EXPORT_FORMATS,
    EXPORT_OUTPUTS,
    METADATA_FILE,
    SERVING_SIGNATURE,
    TFLITE_PRECISIONS,
    TFLiteCascade,
    TFLiteModel,
)
from .outputs import (
    SubmissionWriter,
    iter_predict,
    overlay,
    overlay_figures,
    predict_dir,
    submission_frame,
    true_masks,
    write_submission,
)

__all__ = [
    "ABSENT", "DECISION_CODES", "EMPTY", "EXPORT_FORMATS", "EXPORT_OUTPUTS", "GATINGS", "KEPT", "METADATA_FILE",
    "NO_DEFECT", "SERVING_SIGNATURE", "SubmissionWriter", "TFLITE_PRECISIONS", "TTA_FLIPS", "Cascade", "CascadeError", "CascadeResult",
    "TFLiteCascade", "TFLiteModel", "default_cascade_path", "evaluate_cascade", "evaluate_folder",
    "iter_predict", "load_default", "main", "overlay", "overlay_figures", "predict", "predict_dir", "read_image", "submission_frame",
    "true_masks", "validation_dice", "validation_summary", "write_submission",
]
