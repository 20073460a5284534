"""Fitting data to a model (model.py) and scoring it (score.py) against plain onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mpiscore.config import SessionConfig
from mpiscore.errors import ConfigError, ModelError
from mpiscore.io.fields import Field
from mpiscore.model import TensorSpec, bind_inputs, output_fields
from mpiscore.score import Scorer, ScorerSettings, open_session
from tests import builders

MODEL_INPUT = [TensorSpec("features", "float32", (None, 8))]


def field(shape=(8,), dtype="<f4", flat=False, name="features") -> dict[str, Field]:
    return {name: Field(name, dtype, shape, "x.h5:/features", flat)}


def test_matching_input_binds() -> None:
    (binding,) = bind_inputs("m.onnx", MODEL_INPUT, field(), "safe")
    assert (binding.name, binding.dtype, binding.row_shape) == ("features", "float32", (8,))


def test_names_must_match() -> None:
    with pytest.raises(ModelError, match=r"missing \['features'\], unknown \['pixels'\]"):
        bind_inputs("m.onnx", MODEL_INPUT, field(name="pixels"), "safe")


@pytest.mark.parametrize("shape", [(4, 2), (5,), ()])
def test_rank_and_shape_must_match(shape) -> None:
    with pytest.raises(ModelError, match=r"x.h5:/features -> m.onnx input 'features'"):
        bind_inputs("m.onnx", MODEL_INPUT, field(shape), "safe")


def test_casting_policy() -> None:
    wide = [TensorSpec("features", "float64", (None, 8))]
    assert bind_inputs("m.onnx", wide, field(), "safe")[0].dtype == "float64"
    with pytest.raises(ModelError, match="--cast same_kind"):
        bind_inputs("m.onnx", MODEL_INPUT, field(dtype="<f8"), "safe")
    assert bind_inputs("m.onnx", MODEL_INPUT, field(dtype="<f8"), "same_kind")
    with pytest.raises(ModelError, match="cannot cast"):
        bind_inputs("m.onnx", MODEL_INPUT, field(dtype="<c8"), "same_kind")


def test_flat_vectors_reshape_to_fixed_row_shape() -> None:
    image = [TensorSpec("features", "float32", (None, 3, 8, 8))]
    (binding,) = bind_inputs("m.onnx", image, field((192,), flat=True), "safe")
    assert binding.row_shape == (3, 8, 8)
    with pytest.raises(ModelError):
        bind_inputs("m.onnx", image, field((192,), flat=False), "safe")


def test_output_fields_need_one_row_per_input_row() -> None:
    outputs = {"y": np.zeros((2, 3), np.float32), "label": np.zeros(2, np.int64)}
    fields = output_fields(outputs, {"label": "predicted"}, 2, "m.onnx")
    assert [(f.name, f.dtype, f.shape) for f in fields] == [
        ("y", "<f4", (3,)), ("predicted", "<i8", ())]
    with pytest.raises(ModelError, match="one output row per input row"):
        output_fields({"y": np.zeros((1, 3))}, {}, 2, "m.onnx")
    with pytest.raises(ModelError, match="unknown outputs"):
        output_fields(outputs, {"nope": "x"}, 2, "m.onnx")


def scorer(model: Path) -> Scorer:
    session = open_session(model.read_bytes(), str(model), ScorerSettings(SessionConfig(), 1))
    inputs = [TensorSpec(n.name, "float32", tuple(d if isinstance(d, int) else None
                                                  for d in n.shape)) for n in
              session.get_inputs()]
    return Scorer(session, bind_inputs(str(model), inputs, field(), "safe"), str(model))


@pytest.mark.parametrize("batch", ["N", 1, 4])
def test_scorer_matches_plain_onnxruntime(tmp_path: Path, batch) -> None:
    model = builders.mlp(tmp_path / "m.onnx", batch=batch)
    data = builders.features(23)
    got = scorer(model).score({"features": data})
    want = builders.reference(model, features=data)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
        assert got[name].shape == want[name].shape


def test_not_a_model_and_missing_provider(tmp_path: Path) -> None:
    bogus = tmp_path / "m.onnx"
    bogus.write_text("hello")
    with pytest.raises(ModelError, match="cannot load as an ONNX model"):
        open_session(bogus.read_bytes(), str(bogus), ScorerSettings(SessionConfig(), 1))
    model = builders.mlp(tmp_path / "ok.onnx").read_bytes()
    settings = ScorerSettings(SessionConfig(providers=("NoSuchExecutionProvider",)), 1)
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider not in this onnxruntime"):
        open_session(model, "ok.onnx", settings)
