"""Inference: the champion model from MLflow, micro-batched predictions, heatmaps and SR."""
