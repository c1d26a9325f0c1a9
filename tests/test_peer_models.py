"""ONNX's own backend test models (PyTorch exports shipped in the onnx wheel) pass gradcheck as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxsight
from onnxsight.engine.autodiff import RULES

PEERS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
# How many peer models were covered when this suite was last extended; coverage may only grow.
COVERED_AT_LEAST = 80


def _float_input(model: onnx.ModelProto) -> bool:
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    return len(inputs) == 1 and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _covered(folder: Path) -> bool:
    model = onnx.load(str(folder / "model.onnx"))
    return _float_input(model) and all(node.op_type in RULES or node.op_type == "Constant" for node in model.graph.node)


PEER_FOLDERS = sorted(p for p in PEERS.iterdir() if (p / "model.onnx").is_file())
COVERED = [p for p in PEER_FOLDERS if _covered(p)]


def test_peer_coverage_does_not_drop():
    ops = {n.op_type for p in PEER_FOLDERS for n in onnx.load(str(p / "model.onnx")).graph.node}
    missing = sorted(ops - set(RULES) - {"Constant"})
    skipped = [p.name for p in PEER_FOLDERS if p not in COVERED]
    print(f"\npeer models covered: {len(COVERED)} of {len(PEER_FOLDERS)}; not covered: {', '.join(skipped)}; "
          f"ops without a rule: {', '.join(missing) or 'none'}")
    assert len(COVERED) >= COVERED_AT_LEAST


@pytest.mark.parametrize("folder", COVERED, ids=[p.name for p in COVERED])
def test_peer_model_passes_gradcheck(folder):
    model = onnxsight.load(folder / "model.onnx", device="cpu")
    tensor = onnx.TensorProto()
    tensor.ParseFromString((folder / "test_data_set_0" / "input_0.pb").read_bytes())
    x = numpy_helper.to_array(tensor).astype(np.float32)
    report = onnxsight.gradcheck(model, x, of="output", wrt=["input"], directions=4)
    row = report.rows[0]
    assert row.status == "ok", f"{folder.name}: relative error {row.relative_error:.2e} ({row.kinks} kinks)"
