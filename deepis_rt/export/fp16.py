"""FP32 -> FP16 conversion of an exported ONNX graph (weights and compute in half, float32 I/O).

A small pass of our own over the ONNX graph rather than a converter package: the DeepIS graph only
holds Conv, Relu, Add, Resize and a little shape arithmetic, and owning the pass lets us say exactly
what stays in FP32:

* the graph input and output stay ``float32`` (a ``Cast`` right after the input and right before the
  output), so callers feed and read the same arrays as with the FP32 file;
* integer tensors (shapes, sizes) are never touched;
* ``Resize`` keeps its ``roi`` and ``scales`` inputs in FP32 (the operator requires ``scales`` to be
  float32); its data input and output are FP16;
* op types named in ``keep_fp32_ops`` run in FP32 between a pair of casts. None are kept by default:
  measured parity (docs/export.md) shows the FP16 graph within tolerance without them.

Strongly typed TensorRT (10.12 and later) takes the precision of every layer from this graph.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

import numpy as np

__all__ = ["convert_to_fp16", "float16_summary", "FP32_ONLY_INPUTS"]

log = logging.getLogger(__name__)

#: (op type, input index) pairs whose input must stay float32 whatever the graph precision.
FP32_ONLY_INPUTS: frozenset[tuple[str, int]] = frozenset({("Resize", 1), ("Resize", 2)})

_FP16_MAX = float(np.finfo(np.float16).max)


def _to_half(array: np.ndarray, name: str) -> np.ndarray:
    big = np.abs(array) > _FP16_MAX
    if big.any():
        log.warning("fp16 | %s: %d value(s) beyond the FP16 range were clipped", name, int(big.sum()))
        array = np.clip(array, -_FP16_MAX, _FP16_MAX)
    return array.astype(np.float16)


def convert_to_fp16(model, keep_fp32_ops: Iterable[str] = (), keep_fp32_nodes: Iterable[str] = ()):
    """A copy of ``model`` whose weights and computation are FP16, with float32 input and output.

    Parameters
    ----------
    model : onnx.ModelProto
        An FP32 graph (as written by :func:`~deepis_rt.export.onnx_export.export_onnx`).
    keep_fp32_ops : iterable of str
        ONNX op types to compute in FP32 (cast in and out around each such node).
    keep_fp32_nodes : iterable of str
        Names of single nodes to compute in FP32 (e.g. the output head).

    Returns
    -------
    onnx.ModelProto
        The converted model, checked with ``onnx.checker`` and shape inference.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    keep_ops, keep_nodes = set(keep_fp32_ops), set(keep_fp32_nodes)

    def kept(node) -> bool:
        return node.op_type in keep_ops or node.name in keep_nodes

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    float_names = {name for name, dtype in _tensor_dtypes(model).items() if dtype == FLOAT}
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    graph = proto.graph

    # Names that must remain float32: inputs of FP32-only slots and of kept nodes.
    fp32_names: set[str] = set()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name and ((node.op_type, i) in FP32_ONLY_INPUTS or kept(node)):
                fp32_names.add(name)

    for init in graph.initializer:
        if init.data_type == FLOAT and init.name not in fp32_names:
            init.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(init), init.name), init.name))
    for node in graph.node:
        if node.op_type == "Constant" and not any(o in fp32_names for o in node.output):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(attr.t), node.name), attr.t.name))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = HALF

    new_nodes = []
    counter = 0

    def fresh(base: str) -> str:
        nonlocal counter
        counter += 1
        return f"{base}__fp16cast{counter}"

    graph_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == FLOAT}
    graph_outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == FLOAT}
    renamed_in = {name: name + "__fp16" for name in graph_inputs}
    for name, half in renamed_in.items():
        new_nodes.append(helper.make_node("Cast", [name], [half], to=HALF, name=fresh("input")))
    out_half = {name: name + "__fp16" for name in graph_outputs}

    direct_outputs: set[str] = set()  # graph outputs written in FP32 by a kept node
    consumed = {name for node in graph.node for name in node.input}
    # weights and constants left in float32 (inputs of kept nodes) need no cast
    still_fp32 = {i.name for i in graph.initializer if i.data_type == FLOAT} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output if o in fp32_names}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed_in and not ((node.op_type, i) in FP32_ONLY_INPUTS or kept(node)):
                node.input[i] = renamed_in[name]
            elif name in out_half:  # a graph output that is also used inside the graph
                node.input[i] = out_half[name]
        if kept(node):
            # compute this node in float32: cast FP16 inputs up, its outputs back down
            for i, name in enumerate(node.input):
                if name and name not in graph_inputs and name not in still_fp32 and (
                        name in float_names or name in out_half.values()):
                    up = fresh(name)
                    new_nodes.append(helper.make_node("Cast", [name], [up], to=FLOAT, name=up))
                    node.input[i] = up
            new_nodes.append(node)
            for i, name in enumerate(node.output):
                if name in out_half:  # straight to the float32 graph output, no FP16 rounding
                    direct_outputs.add(name)
                    if name in consumed:
                        new_nodes.append(helper.make_node("Cast", [name], [out_half[name]], to=HALF,
                                                          name=fresh("down")))
                    continue
                raw = fresh(name)
                node.output[i] = raw
                new_nodes.append(helper.make_node("Cast", [raw], [name], to=HALF, name=fresh("down")))
            continue
        for i, name in enumerate(node.output):
            if name in out_half:
                node.output[i] = out_half[name]
        new_nodes.append(node)
    for name, half in out_half.items():
        if name not in direct_outputs:
            new_nodes.append(helper.make_node("Cast", [half], [name], to=FLOAT, name=fresh("output")))
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Types of intermediate tensors changed: drop them and let shape inference fill them again.
    del graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.checker.check_model(proto)
    return proto


def _tensor_dtypes(model) -> dict[str, int]:
    """Element type of every named tensor of ``model`` (after shape inference)."""
    import onnx

    proto = onnx.shape_inference.infer_shapes(model)
    dtypes: dict[str, int] = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        dtypes[vi.name] = vi.type.tensor_type.elem_type
    for init in proto.graph.initializer:
        dtypes[init.name] = init.data_type
    return dtypes


def float16_summary(model) -> dict[str, object]:
    """Which tensors of ``model`` are FP16: counts per op type, for reports and tests.

    Returns
    -------
    dict
        ``initializers`` (dtype name -> count), ``conv_inputs`` (dtype name -> count over every Conv
        data input and weight, from shape inference), ``io`` (input/output dtype names).
    """
    from onnx import TensorProto

    proto = model
    dtypes = _tensor_dtypes(model)
    name_of = {v: k.lower() for k, v in TensorProto.DataType.items()}
    inits = Counter(name_of.get(i.data_type, "?") for i in proto.graph.initializer)
    conv_inputs: Counter[str] = Counter()
    for node in proto.graph.node:
        if node.op_type == "Conv":
            for name in node.input[:2]:
                conv_inputs[name_of.get(dtypes.get(name, 0), "unknown")] += 1
    return {
        "initializers": dict(inits),
        "conv_inputs": dict(conv_inputs),
        "io": {
            "inputs": [name_of.get(i.type.tensor_type.elem_type, "?") for i in proto.graph.input],
            "outputs": [name_of.get(o.type.tensor_type.elem_type, "?") for o in proto.graph.output],
        },
    }
