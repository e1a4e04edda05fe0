"""Training: snapshot manifests to MONAI datasets and transforms, networks, evaluation.

Modules
-------
reader
    DICOM instance -> float32 display image in [0, 1]; ``LoadDicomFromStore`` transform;
    manifest rows -> MONAI data dictionaries.
volume_reader
    A series (store keys or files) -> one oriented, resampled ``(1, D, H, W)`` volume;
    ``LoadSeriesFromStore`` transform.
transforms
    MONAI transform chains from a small configuration; seeding.
networks
    Network factory by name; weights from local files only.
evaluation
    AUROC with bootstrap CIs, validation-chosen thresholds, calibration, per-site results.
export
    A registered version as a MONAI bundle or ONNX, checked against the served model.

Importing this package imports nothing heavy; import the module you need.
"""
