"""The HAR architectures as ONNX graphs built from a harstream model's weights, run by ONNX Runtime.

The graph is written directly with the ``onnx`` helper API from the Flax parameters, so
this peer needs neither PyTorch nor an exporter: standardisation, the network and the
softmax are one graph, fed the same ``(n, 80, 3)`` windows as the service. Imported only
when ``onnx`` and ``onnxruntime`` are installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def build_graph(
    arch: str, params: Mapping[str, Any], mean: np.ndarray, std: np.ndarray
) -> onnx.ModelProto:
    """A checked ONNX model ``x (n, 80, 3) -> probs (n, classes)`` for ``arch`` with ``params``."""
    inits = {
        "mean": np.asarray(mean, np.float32).reshape(1, 1, -1),
        "std": np.asarray(std, np.float32).reshape(1, 1, -1),
        "dense_w": _array(params["dense"]["kernel"]).T,
        "dense_b": _array(params["dense"]["bias"]),
    }
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"])]
    nodes.append(helper.make_node("Div", ["centred", "std"], ["scaled"]))
    if arch == "har-cnn":
        features = _cnn_nodes(params, nodes, inits)
    elif arch == "har-lstm":
        features = _lstm_nodes(params, nodes, inits)
    else:
        raise ValueError(f"no ONNX graph for {arch!r}; expected 'har-cnn' or 'har-lstm'")
    nodes.append(helper.make_node("Gemm", [features, "dense_w", "dense_b"], ["logits"], transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    classes = inits["dense_b"].shape[0]
    graph = helper.make_graph(
        nodes,
        arch,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 80, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _cnn_nodes(params: Mapping[str, Any], nodes: list, inits: dict[str, np.ndarray]) -> str:
    """Conv layers run channels-first: Flax kernels (k, in, out) become ONNX (out, in, k)."""
    nodes.append(helper.make_node("Transpose", ["scaled"], ["ncw"], perm=[0, 2, 1]))
    x = "ncw"
    for i, name in enumerate(("conv1", "conv2", "conv3", "conv4")):
        inits[f"{name}_w"] = _array(params[name]["kernel"]).transpose(2, 1, 0)
        inits[f"{name}_b"] = _array(params[name]["bias"])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_out"]))
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_act"]))
        x = f"{name}_act"
        if i == 1:
            nodes.append(
                helper.make_node("MaxPool", [x], ["pooled"], kernel_shape=[3], strides=[3])
            )
            x = "pooled"
    nodes.append(helper.make_node("ReduceMean", [x], ["features"], axes=[2], keepdims=0))
    return "features"


def _lstm_nodes(params: Mapping[str, Any], nodes: list, inits: dict[str, np.ndarray]) -> str:
    """ONNX LSTM gates are ordered i, o, f, c; its input is time-major (seq, n, features)."""
    nodes.append(helper.make_node("Transpose", ["scaled"], ["seq"], perm=[1, 0, 2]))
    inits["axis0"] = np.array([0], np.int64)
    inits["axis1"] = np.array([1], np.int64)
    x, layer = "seq", 0
    while f"OptimizedLSTMCell_{layer}" in params:
        cell = params[f"OptimizedLSTMCell_{layer}"]
        hidden = _array(cell["hi"]["kernel"]).shape[1]
        inits[f"w{layer}"] = np.concatenate([_array(cell[f"i{g}"]["kernel"]).T for g in "iofg"])[
            None
        ]
        inits[f"r{layer}"] = np.concatenate([_array(cell[f"h{g}"]["kernel"]).T for g in "iofg"])[
            None
        ]
        recurrent_bias = np.concatenate([_array(cell[f"h{g}"]["bias"]) for g in "iofg"])
        inits[f"b{layer}"] = np.concatenate([np.zeros_like(recurrent_bias), recurrent_bias])[None]
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, f"w{layer}", f"r{layer}", f"b{layer}"],
                [f"y{layer}", f"h{layer}"],
                hidden_size=int(hidden),
            )
        )
        nodes.append(helper.make_node("Squeeze", [f"y{layer}", "axis1"], [f"seq{layer}"]))
        x, layer = f"seq{layer}", layer + 1
    nodes.append(helper.make_node("Squeeze", [f"h{layer - 1}", "axis0"], ["features"]))
    return "features"


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (and one inter-op thread: one graph)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def inference_call(sess: ort.InferenceSession):
    """``x -> probabilities`` as NumPy (ONNX Runtime returns host arrays)."""

    def call(x: np.ndarray) -> np.ndarray:
        return sess.run(["probs"], {"x": x})[0]

    return call


def _array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)
