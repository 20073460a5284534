"""Models with external data (scoring/scorers/onnx_data.py, onnx.py): opened from their
bytes in a process running anywhere, they score as onnxruntime scores them from their
path; their files are found (subgraphs' and attributes' tensors too), a missing one is
refused in one line, and each is digested for --resume (model.data_digests)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from mpiscore.config import BatchSize, InputSpec, JobConfig, ScorerSettings, SessionConfig
from mpiscore.errors import ModelError
from mpiscore.faults import FaultPlan
from mpiscore.lock import LockOwner
from mpiscore.model import data_digests
from mpiscore.placement import scorer_settings
from mpiscore.scoring import main
from mpiscore.scoring.prepare import prepare
from mpiscore.scoring.scorers import onnx as onnx_scorer
from mpiscore.scoring.scorers import open_scorer
from mpiscore.scoring.scorers.onnx import DATA_FOLDER, session_source
from mpiscore.scoring.scorers.onnx_data import external_locations
from mpiscore.wire import ScorerSpec
from tests import builders

SETTINGS = ScorerSettings(SessionConfig(), 1)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """An MLP in ``model/m.onnx``, its weights in ``model/weights.bin``."""
    (tmp_path / "model").mkdir()
    return builders.with_external_data(builders.mlp(tmp_path / "model" / "m.onnx"))


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory other than the model's."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "elsewhere"


def test_a_model_with_external_data_scores_from_any_folder(model: Path, elsewhere: Path
                                                           ) -> None:
    relative = os.path.relpath(model)  # ../model/m.onnx, as a job may name it
    scorer = open_scorer("onnx", model.read_bytes(), relative, SETTINGS)
    data = builders.features(23, seed=3)
    builders.assert_matches(dict(scorer.score({"features": data})),
                            builders.reference(model, features=data))
    assert scorer.data_files == {"weights.bin": model.parent / "weights.bin"}


def test_a_missing_external_data_file_is_one_model_error_naming_it(model: Path,
                                                                  elsewhere: Path) -> None:
    (model.parent / "weights.bin").unlink()
    with pytest.raises(ModelError) as caught:
        open_scorer("onnx", model.read_bytes(), "../model/m.onnx", SETTINGS)
    assert str(caught.value) == (
        f"../model/m.onnx: external data file {model.parent / 'weights.bin'} not found (the "
        "model keeps tensor 'w1' in 'weights.bin', relative to its folder); put the file "
        "back beside the model")


def test_the_session_opens_the_job_s_bytes_told_the_model_s_folder(model: Path,
                                                                    elsewhere: Path) -> None:
    options = ort.SessionOptions()
    assert session_source(model.read_bytes(), "../model/m.onnx", options) == model.read_bytes()
    assert options.get_session_config_entry(DATA_FOLDER) == str(model.parent)
    plain = builders.mlp(elsewhere / "plain.onnx")
    assert session_source(plain.read_bytes(), "plain.onnx", options) == plain.read_bytes()


def test_an_onnxruntime_that_ignores_the_folder_opens_the_model_s_path(model: Path,
                                                                     elsewhere: Path) -> None:
    """Before 1.21 onnxruntime would look for the data in the working directory."""
    old = (1, 20)
    assert session_source(model.read_bytes(), "../model/m.onnx", ort.SessionOptions(),
                          old) == "../model/m.onnx"
    with pytest.raises(ModelError, match=r"^\.\./model/m\.onnx: the model file changed while "
                       "the job started; start it again$"):
        session_source(model.read_bytes() + b"\n", "../model/m.onnx", ort.SessionOptions(), old)


def test_every_tensor_s_file_is_found_in_subgraphs_and_attributes(tmp_path: Path) -> None:
    """One file per tensor, as onnx writes them: an initializer, a Constant's value, and
    an If's branches with theirs."""
    model = builders.with_external_data(_branching(tmp_path / "if.onnx"), location=None)
    written = {p.name for p in tmp_path.iterdir()} - {"if.onnx"}
    assert written == {"bias", "a", "b", "c"}
    assert set(external_locations(model.read_bytes())) == written


def test_sparse_tensors_external_data_is_found() -> None:
    values = numpy_helper.from_array(np.ones(2, np.float32), "s_values")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "s_indices")
    for tensor, location in ((values, "values.bin"), (indices, "indices.bin")):
        set_external_data(tensor, location)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    graph = helper.make_graph([], "sparse", [], [], sparse_initializer=[
        helper.make_sparse_tensor(values, indices, [4])])
    found = external_locations(helper.make_model(graph).SerializeToString())
    assert found == {"values.bin": "s_values", "indices.bin": "s_indices"}


def test_a_model_that_is_no_protobuf_names_no_files() -> None:
    assert external_locations(b"\x00\x01not protobuf\xff") == {}
    assert external_locations(b"") == {}


def test_data_digests_are_each_file_s_sha256(model: Path) -> None:
    weights = model.parent / "weights.bin"
    assert data_digests({"weights.bin": weights}) == {
        "weights.bin": hashlib.sha256(weights.read_bytes()).hexdigest()}
    weights.unlink()
    with pytest.raises(ModelError, match=r"weights\.bin: cannot read the model.s external data"):
        data_digests({"weights.bin": weights})


def _branching(path: Path) -> Path:
    """``y = x + a`` if ``flag`` else ``y = x * b + c``: tensors at every level."""
    def const(name: str, value: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.full(2, value, np.float32), name)

    def branch(name: str, nodes: list[onnx.NodeProto], init: list[onnx.TensorProto]
               ) -> onnx.GraphProto:
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
            "y_" + name, TensorProto.FLOAT, ["N", 2])], init)

    then = branch("then", [helper.make_node("Add", ["x", "a"], ["y_then"])], [const("a", 1)])
    other = branch("else", [helper.make_node("Constant", [], ["c"], value=const("c", 3)),
                            helper.make_node("Mul", ["x", "b"], ["xb"]),
                            helper.make_node("Add", ["xb", "c"], ["y_else"])], [const("b", 2)])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x0", "bias"], ["x"]),
         helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)],
        "branching",
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [const("bias", 0.5)])
    onnx.save(helper.make_model(graph, opset_imports=builders.OPSET, ir_version=8), path)
    return path


# ---- weights replaced while the job starts: every process scores the weights digested ----

def _replace_weights(model: Path) -> None:
    """A new checkpoint written over the old one, as a training job saving in place
    does: the graph the same, the weights file another."""
    graph = model.read_bytes()
    builders.with_external_data(builders.mlp(model, seed=5))
    assert model.read_bytes() == graph


def _job(model: Path, tmp_path: Path) -> tuple[JobConfig, bytes, ScorerSettings]:
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(20))
    config = JobConfig(model=model, inputs=(InputSpec(str(data), "/features"),),
                       output=tmp_path / "out.h5", batch_size=BatchSize(rows=10))
    return config, model.read_bytes(), scorer_settings(config, 0, 1)


def test_weights_replaced_while_a_process_loads_them_are_refused(
        model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opening = onnx_scorer.open_session

    def replaced_midway(*args: object):
        session = opening(*args)
        _replace_weights(model)
        return session

    monkeypatch.setattr(onnx_scorer, "open_session", replaced_midway)
    with pytest.raises(ModelError, match=r"weights\.bin: the external data of .*m\.onnx "
                                         r"changed while this process loaded it"):
        open_scorer("onnx", model.read_bytes(), str(model), SETTINGS)


def test_weights_replaced_before_the_job_digested_them_are_refused(model: Path,
                                                                   tmp_path: Path) -> None:
    """Rank 0's first process opens its session, then digests the files for the job."""
    config, model_bytes, settings = _job(model, tmp_path)
    scorer = open_scorer("onnx", model_bytes, str(model), settings)
    _replace_weights(model)
    with pytest.raises(ModelError, match="changed while the job started"):
        prepare(config, model_bytes, lambda: scorer, LockOwner.here())
    assert not (tmp_path / "out.h5.partial").exists()


def test_a_process_that_loads_other_weights_than_the_job_s_does_not_start(
        model: Path, tmp_path: Path) -> None:
    config, model_bytes, settings = _job(model, tmp_path)
    job, _, first = prepare(config, model_bytes,
                            lambda: open_scorer("onnx", model_bytes, str(model), settings),
                            LockOwner.here())
    spec = ScorerSpec(job.shared(), model_bytes, settings, "rank 1", FaultPlan())
    main._processor(spec, None).close()  # the same files: it starts
    _replace_weights(model)
    with pytest.raises(ModelError, match="changed while the job started"):
        main._processor(spec, None)
    first.close()
    job.lock.release()
