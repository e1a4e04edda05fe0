"""The network as an ONNX graph of probabilities, and an ONNX Runtime session to run one.

One place for what ``medai models export --format onnx`` (:mod:`.export`), the int8
model of training (:mod:`.quantize`) and the service's fast path
(:mod:`medai.serving.inference.fast_path`) share: the graph's names, the export of the
network with its sigmoid (batch axis dynamic), and the CPU session options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

__all__ = ["INPUT", "OUTPUT", "cpu_session", "export_probabilities"]

INPUT: Final = "image"
OUTPUT: Final = "probabilities"


def export_probabilities(network: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write ``network`` followed by a sigmoid as ONNX to ``path``, the batch axis dynamic.

    ``example`` is a batch of model inputs (one image is enough). Raises what
    ``torch.onnx.export`` raises.
    """
    wrapped = nn.Sequential(network, nn.Sigmoid()).eval()
    # Two images: torch.export specialises a batch axis of size 1.
    pair = example[:2] if len(example) >= 2 else torch.cat([example[:1]] * 2)
    torch.onnx.export(
        wrapped,
        (pair,),
        str(path),
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        external_data=False,
        verbose=False,
    )


def cpu_session(model: bytes | str) -> Any:
    """An ONNX Runtime session of ``model`` on the CPU (raises onnxruntime's own errors).

    As many threads as torch was given (the cores shared by the worker processes), and no
    spinning between operators: a service's decode threads need those cores between
    batches.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
