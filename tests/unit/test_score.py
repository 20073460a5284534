"""scoring/scorers/onnx.py: the "onnx" scorer against plain onnxruntime
(tests.builders.reference), its inputs bound as a job binds them (pipeline.bound)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mpiscore.config import ScorerSettings, SessionConfig
from mpiscore.errors import ConfigError, ModelError, ScoringError
from mpiscore.io.fields import Field
from mpiscore.model import InputBinding, bind_inputs
from mpiscore.scoring.pipeline import bound
from mpiscore.scoring.scorers import open_scorer
from mpiscore.scoring.scorers.onnx import OnnxScorer, open_session
from tests import builders

SETTINGS = ScorerSettings(SessionConfig(), 1)


class Bound:
    """An "onnx" scorer fed as the pipeline feeds it: arrays bound to its inputs first."""

    def __init__(self, scorer: OnnxScorer, bindings: tuple[InputBinding, ...]) -> None:
        self.scorer, self.bindings = scorer, bindings

    def score(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.scorer.score(bound(arrays, self.bindings))


def scorer(model: Path, fields: dict[str, Field], cast: str = "safe",
           settings: ScorerSettings = SETTINGS) -> Bound:
    opened = open_scorer("onnx", model.read_bytes(), model.name, settings)
    assert isinstance(opened, OnnxScorer)
    return Bound(opened, bind_inputs(model.name, opened.inputs, fields, cast))


def features_field(width: int = 8, dtype: str = "<f4", flat: bool = False) -> dict[str, Field]:
    return {"features": Field("features", dtype, (width,), "x.h5:/features", flat)}


def assert_matches(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_allclose(got[name], array, rtol=1e-6, atol=1e-6)


def test_symbolic_batch_mlp_matches_reference(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx")
    data = builders.features(37, seed=4)
    s = scorer(model, features_field())
    assert s.scorer.fixed_batch is None and s.scorer.output_names == ["logits", "label"]
    assert_matches(s.score({"features": data}), builders.reference(model, features=data))


def test_batches_scored_separately_match_the_whole(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx")
    data = builders.features(30, seed=6)
    s = scorer(model, features_field())
    pieces = [s.score({"features": data[a:b]}) for a, b in [(0, 1), (1, 17), (17, 30)]]
    joined = {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
    assert_matches(joined, builders.reference(model, features=data))


@pytest.mark.parametrize(("batch", "rows"), [(1, 5), (4, 10), (4, 8), (4, 3)])
def test_fixed_batch_model_matches_reference(tmp_path: Path, batch: int, rows: int) -> None:
    model = builders.mlp(tmp_path / "fixed.onnx", batch=batch)
    data = builders.features(rows, seed=batch + rows)
    s = scorer(model, features_field())
    assert s.scorer.fixed_batch == batch
    got = s.score({"features": data})
    assert len(got["logits"]) == rows == len(got["label"])
    assert_matches(got, builders.reference(model, features=data))


def test_padding_does_not_change_the_real_rows(tmp_path: Path) -> None:
    """Rows scored in a padded last piece equal the same rows scored one by one."""
    model = builders.mlp(tmp_path / "fixed.onnx", batch=4)
    one = builders.mlp(tmp_path / "one.onnx", batch=1)
    data = builders.features(6, seed=9)
    padded = scorer(model, features_field()).score({"features": data})
    single = scorer(one, features_field()).score({"features": data})
    assert_matches(padded, single)


def test_float64_data_cast_under_same_kind(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx")
    data = builders.features(9, dtype="float64", seed=2)
    s = scorer(model, features_field(dtype="<f8"), cast="same_kind")
    expected = builders.reference(model, features=data.astype(np.float32))
    assert_matches(s.score({"features": data}), expected)


def test_flat_rows_reshaped_for_an_image_model(tmp_path: Path) -> None:
    model = builders.image_net(tmp_path / "cnn.onnx")
    images = np.random.default_rng(3).normal(size=(7, 3, 8, 8)).astype(np.float32)
    fields = {"image": Field("image", "<f4", (192,), "x.parquet:pixels", flat=True)}
    s = scorer(model, fields)
    got = s.score({"image": images.reshape(7, 192)})
    assert_matches(got, builders.reference(model, image=images))


def test_two_input_model(tmp_path: Path) -> None:
    model = builders.two_inputs(tmp_path / "two.onnx")
    a, b = builders.features(5, width=4, seed=1), builders.features(5, width=3, seed=2)
    fields = {"a": Field("a", "<f4", (4,)), "b": Field("b", "<f4", (3,))}
    got = scorer(model, fields).score({"b": b, "a": a})
    assert_matches(got, builders.reference(model, a=a, b=b))


def test_non_onnx_bytes_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"junk\.onnx: cannot load as an ONNX model"):
        open_session(b"this is not a model", "junk.onnx", SETTINGS)


def test_unknown_provider_raises_config_error() -> None:
    settings = ScorerSettings(SessionConfig(providers=("NoSuchExecutionProvider",)), 1)
    with pytest.raises(ConfigError, match="--providers: NoSuchExecutionProvider not in"):
        open_session(b"", "m.onnx", settings)


def test_onnxruntime_failure_becomes_scoring_error(tmp_path: Path) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx")
    opened = OnnxScorer.open(model.read_bytes(), "mlp.onnx", SETTINGS)
    wrong = (InputBinding("features", "float32", (5,)),)  # the model wants 8 per row
    with pytest.raises(ScoringError, match=r"mlp\.onnx: onnxruntime failed"):
        Bound(opened, wrong).score({"features": np.zeros((3, 5), np.float32)})


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_every_optimisation_level_gives_the_same_scores(tmp_path: Path, level: str) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx")
    data = builders.features(11, seed=8)
    settings = ScorerSettings(SessionConfig(graph_optimization=level, allow_spinning=True), 2)
    got = scorer(model, features_field(), settings=settings).score({"features": data})
    assert_matches(got, builders.reference(model, features=data))


def test_outputs_never_share_memory_with_inputs(tmp_path: Path) -> None:
    """The HDF5 reader reuses its buffers for the next batch while the previous batch's
    outputs are still being written: even an Identity model must return copies."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["same"])], "identity",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, ["N", 8])])
    model = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=builders.OPSET, ir_version=8), model)
    data = builders.features(32)
    result = scorer(model, features_field()).score({"features": data})["same"]
    np.testing.assert_array_equal(result, data)
    assert not np.shares_memory(result, data)


def sliced(model: Path, fields: dict[str, Field], run_rows: int | None) -> Bound:
    return scorer(model, fields, settings=ScorerSettings(SessionConfig(run_rows=run_rows), 1))


@pytest.mark.parametrize("run_rows", [1, 7, 300, 5000])
def test_a_batch_run_in_slices_gives_the_rows_of_one_whole_run(tmp_path: Path,
                                                               run_rows: int) -> None:
    """Bitwise: slices change where a run starts, never what a row gets."""
    model = builders.mlp(tmp_path / "mlp.onnx")
    data = builders.features(1003, seed=12)
    s = sliced(model, features_field(), run_rows)
    got = s.score({"features": data})
    want = builders.reference(model, features=data)
    assert s.scorer.run_rows == run_rows
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].tobytes() == array.tobytes(), name


def test_slices_of_a_two_input_model_keep_the_inputs_aligned(tmp_path: Path) -> None:
    model = builders.two_inputs(tmp_path / "two.onnx")
    a, b = builders.features(50, width=4, seed=1), builders.features(50, width=3, seed=2)
    fields = {"a": Field("a", "<f4", (4,)), "b": Field("b", "<f4", (3,))}
    got = sliced(model, fields, 8).score({"b": b, "a": a})
    assert_matches(got, builders.reference(model, a=a, b=b))


def test_a_measured_slice_size_scores_every_batch_as_one_whole_run_would(tmp_path: Path
                                                                         ) -> None:
    """The measuring batches (whole, then 4,096, 1,024, 256 rows a run) and those after
    it: each equal to plain onnxruntime on the batch, and a size is chosen."""
    model = builders.mlp(tmp_path / "mlp.onnx", hidden=256)
    s = sliced(model, features_field(), None)
    for seed in range(8):
        data = builders.features(8192 + seed, seed=seed)
        got = s.score({"features": data})
        for name, array in builders.reference(model, features=data).items():
            assert got[name].tobytes() == array.tobytes(), (seed, name)
    assert not s.scorer.slicing.measuring
    assert s.scorer.run_rows in (0, 4096, 1024, 256)


def test_zipmap_outputs_of_slices_join_into_the_batch_s_rows(tmp_path: Path) -> None:
    from tests import sklearn_models

    model = sklearn_models.classifier(tmp_path / "forest.onnx", kind="forest")
    x, _ = sklearn_models.training_data(700, seed=3)
    fields = {"X": Field("X", "<f4", (x.shape[1],))}
    whole = sliced(model, fields, 700).score({"X": x})
    in_slices = sliced(model, fields, 64).score({"X": x})
    assert list(in_slices) == list(whole)
    for name in whole:  # an ai.onnx.ml kernel's floats may move in the last bits
        if whole[name].dtype.kind == "f":
            np.testing.assert_allclose(in_slices[name], whole[name], rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(in_slices[name], whole[name], err_msg=name)


@pytest.mark.parametrize(("kind", "zipmap"), [("logistic", False), ("forest", True)])
def test_ai_onnx_ml_models_run_whole_batches_unless_told(tmp_path: Path, kind: str,
                                                         zipmap: bool) -> None:
    """skl2onnx's LinearClassifier, Normalizer and TreeEnsemble kernels can change a
    row's last bits with the run's row count: auto never slices them (the size measured
    would differ between processes and runs); --run-rows still does."""
    from mpiscore.scoring.scorers.onnx_outputs import node_domains
    from tests import sklearn_models

    model = sklearn_models.classifier(tmp_path / "m.onnx", kind=kind, zipmap=zipmap)
    assert "ai.onnx.ml" in (node_domains(model.read_bytes()) or set())
    x, _ = sklearn_models.training_data(600, seed=4)
    fields = {"X": Field("X", "<f4", (x.shape[1],))}
    auto = sliced(model, fields, None)
    assert not auto.scorer.slicing.measuring and auto.scorer.slicing.size(600) == 600
    assert sliced(model, fields, 64).scorer.slicing.size(600) == 64


def test_a_graph_of_standard_operators_is_measured(tmp_path: Path) -> None:
    from mpiscore.scoring.scorers.onnx_outputs import node_domains

    model = builders.mlp(tmp_path / "mlp.onnx")
    assert node_domains(model.read_bytes()) == {""}
    assert node_domains(b"not a model") is None
    assert sliced(model, features_field(), None).scorer.slicing.measuring


def test_slices_whose_columns_do_not_join_fail_the_batch_by_name() -> None:
    """A sequence output whose elements change shape between runs cannot be joined: the
    batch fails with one line saying what to pass, not a bare NumPy error."""
    from mpiscore.scoring.scorers.onnx import _joined

    with pytest.raises(ScoringError, match=r"m\.onnx: output column 'seq' differs in shape "
                                           r"between the batch's runs of 2 rows .*--run-rows"):
        _joined("m.onnx", "seq", [np.zeros((2, 3)), np.zeros((2, 4))], 2)
