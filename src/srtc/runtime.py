"""The ONNX contract, in one place: how a generator file is opened and how luma goes through it.

Every generator takes float32 ``[1,1,H,W]`` luma / 255 and gives ``[1,1,2H,2W]`` on the same scale.
The server, the evaluator and the benchmarks all open models and run luma through here, so a figure
measured by a tool is the figure of the code the server runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class ModelError(RuntimeError):
    """The model file is missing, unreadable or does not follow the ONNX contract."""


def open_session(model: str | Path | bytes, threads: int = 2, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session with the server's settings: ``threads`` intra-op threads, no spin-waiting.

    ``model`` is a path or the serialised model; ``optimize=False`` keeps every node and its name
    (for reading intermediate shapes), otherwise the graph is fully optimised.
    """
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ModelError(f"model file not found: {model}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    # Idle intra-op threads would spin-wait for work; on cores shared with the decoder and the encoder
    # that burns the time they need. Measured on a 2-core machine under load, 2 threads: 27.6 ms of
    # CPU per frame without spinning against 39.6 ms with it, and a lower wall time too.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        where = "the given model" if isinstance(model, bytes) else model
        raise ModelError(f"cannot load model {where}: {exc}") from exc


class LumaRunner:
    """One model's session behind the contract: uint8 luma in, float luma (0..1 scale, unclipped) out.

    Safe to call from several threads: onnxruntime sessions are.
    """

    def __init__(self, model: str | Path, threads: int = 2) -> None:
        self.path = Path(model)
        self.session = open_session(self.path, threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(f"{self.path}: expected one [1,1,H,W] input, got {[i.shape for i in inputs]}")
        self._input = inputs[0].name
        self._output = outputs[0].name

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """uint8 ``(H, W)`` luma in; float32 ``(2H, 2W)`` out, on the 0..1 scale."""
        x = y.astype(np.float32)[None, None]
        x *= 1.0 / 255.0
        (sr,) = self.session.run([self._output], {self._input: x})
        return sr[0, 0]
