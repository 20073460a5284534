"""scorers/onnx_outputs.py: classifiers exported by skl2onnx (ZipMap maps, string
labels) and other non-tensor outputs, scored with mpiscore.run and compared with
plain onnxruntime."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpiscore import BatchSize, InputSpec, JobConfig, ModelError, SessionConfig, run
from mpiscore.config import ScorerSettings
from mpiscore.errors import AmbiguousRows, ConfigError, ScoringError
from mpiscore.io import parquet
from mpiscore.io.fields import Field, fill_columns
from mpiscore.model import Column, output_fields
from mpiscore.scoring.scorers import open_scorer
from mpiscore.scoring.scorers.onnx_outputs import OutputConverter, OutputKind, label_width
from tests import builders, sklearn_models
from tests.sklearn_models import STRING_CLASSES

BATCH = 64  # 300 rows: five batches, the last one short


def score(model: Path, x: np.ndarray, output: Path, **options: object) -> Path:
    """Score ``x`` (written to HDF5) with mpiscore in this process; the output path."""
    data = builders.write_h5(output.parent / "x.h5", chunks=BATCH, features=x)
    values: dict = {"batch_size": BatchSize(rows=BATCH),
                    "session": SessionConfig(intra_op_threads=1), **options}
    run(JobConfig(model=model, inputs=(InputSpec(str(data), "/features"),), output=output,
                  **values), comm=None)
    return output


def read_output(path: Path) -> dict[str, np.ndarray]:
    """Every column of an HDF5 or Parquet output, strings as str, in the written order."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as handle:
            return {name: handle[name].asstr()[()] if handle[name].dtype.kind == "S"
                    else handle[name][()] for name in handle if not name.startswith("_")}
    table = ds.dataset(path).to_table()
    return {name: _numpy(table.column(name).combine_chunks()) for name in table.column_names}


def _numpy(array: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1)
    return array.to_numpy(zero_copy_only=False)


def expected_columns(reference: dict[str, object]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs as mpiscore documents them: a list of maps becomes one
    float32 column per class, ``<output>_<class>`` ('/' as '_'), classes sorted."""
    columns: dict[str, np.ndarray] = {}
    for name, value in reference.items():
        if isinstance(value, list):
            for label in sorted(value[0]):
                column = f"{name}_{str(label).replace('/', '_')}"
                columns[column] = np.array([row[label] for row in value], np.float32)
        else:
            columns[name] = np.asarray(value)
    return columns


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted([*want, "row_status"])
    assert not got["row_status"].any()
    for name, expected in want.items():
        if expected.dtype.kind in "OU":
            assert got[name].tolist() == expected.tolist(), name
        else:
            assert got[name].dtype == expected.dtype, name
            np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("output", ["scores.h5", "scores.parquet"])
@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "no-zipmap"])
@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("kind", ["logistic", "forest"])
def test_classifier_outputs_match_onnxruntime(tmp_path: Path, kind: str, labels: str,
                                              zipmap: bool, output: str) -> None:
    model = sklearn_models.classifier(tmp_path / "clf.onnx", kind, labels, zipmap)
    x, _ = sklearn_models.training_data(seed=1)
    want = expected_columns(sklearn_models.reference(model, x))
    if zipmap:  # one column per class, named after the labels, in sorted label order
        classes = sorted(STRING_CLASSES) if labels == "str" else [0, 1, 2, 3]
        names = [f"output_probability_{str(c).replace('/', '_')}" for c in classes]
        assert list(want) == ["output_label", *names]
    got = read_output(score(model, x, tmp_path / output))
    assert_same(got, want)
    if output.endswith(".parquet"):
        table = ds.dataset(tmp_path / output).to_table()
        assert table.column_names == [*want, "row_status"]
        if labels == "str":
            assert table.schema.field(next(iter(want))).type == pa.string()


def test_string_labels_in_hdf5_are_fixed_utf8_as_wide_as_the_longest_class(
        tmp_path: Path) -> None:
    """The width comes from the model's class labels, not only from the probe's 2 rows."""
    model = sklearn_models.classifier(tmp_path / "clf.onnx", "forest", "str")
    longest = max(len(label.encode()) for label in STRING_CLASSES)
    assert label_width(model.read_bytes()) == longest
    x, _ = sklearn_models.training_data(seed=1)
    x[:2, :3] = -2.0  # the probe's 2 rows: "cat", too short to size the strings alone
    out = score(model, x, tmp_path / "scores.h5")
    with h5py.File(out, "r") as handle:
        labels = handle["output_label"]
        assert labels.dtype == np.dtype(f"S{longest}")
        assert h5py.check_string_dtype(labels.dtype).encoding == "utf-8"
        got = labels.asstr()[()].tolist()
    assert got[:2] == ["cat", "cat"] and "émeu des plaines" in got
    assert got == sklearn_models.reference(model, x)["output_label"].tolist()


@pytest.mark.parametrize("output", ["scores.h5", "scores.parquet"])
def test_a_batch_whose_labels_are_all_short_is_written_at_the_output_s_width(
        tmp_path: Path, output: str) -> None:
    """A whole batch of 3-byte labels in a 17-byte HDF5 column: each value in its own
    slot, never run together with the next."""
    model = sklearn_models.classifier(tmp_path / "clf.onnx", "forest", "str")
    x, _ = sklearn_models.training_data(seed=1)
    x[:BATCH * 2, :3] = -2.0  # the first two batches predict short labels only
    got = read_output(score(model, x, tmp_path / output))
    want = sklearn_models.reference(model, x)["output_label"].tolist()
    longest = max(len(label.encode()) for label in STRING_CLASSES)
    assert max(len(label.encode()) for label in want[:BATCH * 2]) < longest
    assert got["output_label"].tolist() == want


def test_label_width_without_string_labels() -> None:
    assert label_width(b"\x00\x01not protobuf\xff") == 0
    assert label_width(b"") == 0


def test_rename_applies_to_each_class_column(tmp_path: Path) -> None:
    model = sklearn_models.classifier(tmp_path / "clf.onnx", "logistic", "str")
    x, _ = sklearn_models.training_data(seed=1)
    out = score(model, x, tmp_path / "scores.parquet",
                rename=(("output_probability", "p"), ("output_label", "predicted")))
    names = [f"p_{c.replace('/', '_')}" for c in sorted(STRING_CLASSES)]
    assert ds.dataset(out).to_table().column_names == ["predicted", *names, "row_status"]


def test_class_column_clashing_with_an_output_is_refused() -> None:
    outputs = {"p_a": np.zeros(2, np.float32), "p_b": np.zeros(2, np.float32)}
    columns = {"p_a": Column("p", "a"), "p_b": Column("p", "b")}
    assert [f.name for f in output_fields(outputs, {}, 2, "m", columns)] == ["p_a", "p_b"]
    with pytest.raises(ConfigError, match=r"output name p_b is taken \(p_b by output 'p' "
                                          r"class 'b', output 'q'"):
        output_fields({**outputs, "q": np.zeros(2)}, {"q": "p_b"}, 2, "m",
                      {**columns, "q": Column("q")})
    with pytest.raises(ConfigError, match="row_status"):
        output_fields(outputs, {"p": "row"}, 2, "m",
                      {"p_a": Column("p", "status"), "p_b": Column("p", "b")})


def test_maps_with_other_classes_fail_the_batch_naming_the_output() -> None:
    """ZipMap always gives every class; a model whose maps differ cannot fill columns."""
    kind = OutputKind("p", "seq(map(int64,tensor(float)))", "maps", "float32")
    converter = OutputConverter([kind], "m.onnx")
    columns = converter.convert([[{1: 0.25, 0: 0.75}, {0: 0.5, 1: 0.5}]], 2)
    assert list(columns) == ["p_0", "p_1"] and columns["p_0"].tolist() == [0.75, 0.5]
    with pytest.raises(ScoringError, match=r"m\.onnx: output 'p' row 1 has classes \[0, 2\]; "
                                           r"expected \[0, 1\]"):
        converter.convert([[{0: 1.0, 1: 0.0}, {0: 0.5, 2: 0.5}]], 2)
    with pytest.raises(ScoringError, match=r"row 0 has classes \[0\]"):
        converter.convert([[{0: 1.0}]], 1)  # a later batch: the first batch fixed the classes


def failing_second_batch(x: np.ndarray) -> np.ndarray:
    """``x`` with a NaN in batch 1, which --on-nan error fails."""
    x = x.copy()
    x[BATCH + 3, 0] = np.nan
    return x


@pytest.mark.parametrize("output", ["scores.h5", "scores.parquet"])
def test_failed_batch_fills_strings_empty_and_class_columns_nan(tmp_path: Path,
                                                                output: str) -> None:
    model = sklearn_models.classifier(tmp_path / "clf.onnx", "logistic", "str")
    x, _ = sklearn_models.training_data(seed=1)
    want = expected_columns(sklearn_models.reference(model, x))
    got = read_output(score(model, failing_second_batch(x), tmp_path / output,
                            error_threshold=-1, max_retries=0))
    failed = slice(BATCH, 2 * BATCH)
    assert got["row_status"][failed].all() and got["row_status"].sum() == BATCH
    assert set(got["output_label"][failed].tolist()) == {""}
    assert np.isnan(got["output_probability_cat"][failed]).all()
    ok = got["row_status"] == 0
    assert got["output_label"][ok].tolist() == want["output_label"][ok].tolist()
    np.testing.assert_allclose(got["output_probability_dog"][ok],
                               want["output_probability_dog"][ok], rtol=1e-6)


def test_fill_values_for_strings() -> None:
    filled = fill_columns([Field("label", "|S5", ()), Field("tags", "<U3", (2,))], 3)
    assert filled["label"].tolist() == [b""] * 3 and filled["tags"].shape == (3, 2)
    assert parquet.to_arrow(filled["label"]).type == pa.string()
    assert parquet.to_arrow(np.array(["é", "b"])).to_pylist() == ["é", "b"]
    assert parquet.to_arrow(np.array([["a", "b"], ["c", "é"]])).to_pylist()[1] == ["c", "é"]


# ---- models built with onnx.helper: outputs without class-label metadata ------------------


def _save(path: Path, nodes: list, output: onnx.ValueInfoProto,
          initializers: list | None = None, width: int = 6) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                   ["N", width])],
        [output], initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def names_model(path: Path) -> Path:
    """``name``: "a" where feature 0 <= 0, else a 12-byte name: strings with no metadata."""
    names = numpy_helper.from_array(np.array(["a", "longer/éname"], dtype=object), "names")
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    nodes = [helper.make_node("Gather", ["features", "zero"], ["first"], axis=1),
             helper.make_node("Squeeze", ["first", "one"], ["x0"]),
             helper.make_node("Greater", ["x0", "origin"], ["positive"]),
             helper.make_node("Cast", ["positive"], ["index"], to=TensorProto.INT64),
             helper.make_node("Gather", ["names", "index"], ["name"])]
    extra = [numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array(0, np.float32), "origin")]
    return _save(path, nodes, helper.make_tensor_value_info("name", TensorProto.STRING, ["N"]),
                 [names, zero, *extra])


def names_data() -> tuple[np.ndarray, np.ndarray]:
    """Rows whose probe (the first 2) gives "a" only; later batches the long name."""
    x = builders.features(200, width=6, seed=3)
    x[:BATCH, 0] = -1.0
    return x, np.where(x[:, 0] > 0, "longer/éname", "a")


def test_string_longer_than_the_hdf5_width_fails_its_batch_clearly(tmp_path: Path) -> None:
    model = names_model(tmp_path / "names.onnx")
    assert label_width(model.read_bytes()) == 0
    x, _ = names_data()
    with pytest.raises(ScoringError) as caught:
        score(model, x, tmp_path / "scores.h5")
    message = str(caught.value)
    assert "\n" not in message and "'longer/éname' needs 13 bytes, more than the 1" in message


def test_strings_without_metadata_go_to_parquet_whole(tmp_path: Path) -> None:
    model = names_model(tmp_path / "names.onnx")
    x, want = names_data()
    got = read_output(score(model, x, tmp_path / "scores.parquet"))
    assert got["name"].tolist() == want.tolist()


def split_model(path: Path, axis: int, width: int = 6) -> Path:
    """``rows``: the features split into a sequence along ``axis`` (0: one tensor per row,
    1: one per feature, every row's)."""
    return _save(path, [helper.make_node("SplitToSequence", ["features"], ["rows"], axis=axis,
                                         keepdims=0)],
                 helper.make_tensor_sequence_value_info("rows", TensorProto.FLOAT, None),
                 width=width)


@pytest.mark.parametrize("output", ["scores.h5", "scores.parquet"])
def test_sequence_of_row_tensors_is_stacked(tmp_path: Path, output: str) -> None:
    model = split_model(tmp_path / "split.onnx", axis=0)
    x = builders.features(150, width=6, seed=5)
    got = read_output(score(model, x, tmp_path / output))
    assert got["rows"].dtype == np.float32
    np.testing.assert_array_equal(got["rows"], x)


@pytest.mark.parametrize("width", [6, 2], ids=["told", "told-by-a-second-probe"])
def test_sequence_of_a_tensor_per_target_is_stacked_by_target(tmp_path: Path,
                                                              width: int) -> None:
    """Each feature as a tensor of every row: rows x targets. Two targets in a 2-row
    probe could be either layout; the probe scores 3 rows then."""
    model = split_model(tmp_path / "split.onnx", axis=1, width=width)
    x = builders.features(150, width=width, seed=6)
    got = read_output(score(model, x, tmp_path / "scores.h5"))
    np.testing.assert_array_equal(got["rows"], x)


def test_a_multi_output_classifier_s_probabilities_are_rows_x_targets_x_classes(
        tmp_path: Path) -> None:
    """skl2onnx's MultiOutputClassifier: ``probabilities`` is one N x classes tensor per
    target. Two targets, so the 2-row probe alone cannot tell; and a batch of exactly
    two rows (the last) is scored as the others were."""
    model, x = sklearn_models.multi_output_classifier(tmp_path / "moc.onnx", targets=2)
    x = x[:BATCH * 4 + 2]
    got = read_output(score(model, x, tmp_path / "scores.h5"))
    want = sklearn_models.reference(model, x)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["probabilities"], np.stack(want["probabilities"], axis=1),
                               rtol=1e-6)


def test_every_scoring_process_stacks_a_sequence_as_the_probe_decided(tmp_path: Path) -> None:
    """Another process whose first batch has 2 rows for 2 targets, which alone cannot tell
    the layout, stacks it as the probe's process decided: the decision travels in the job
    (Job.layouts, given to fix_schema)."""
    model, x = sklearn_models.multi_output_classifier(tmp_path / "moc.onnx", targets=2)
    settings = ScorerSettings(SessionConfig(), 1)
    probe = open_scorer("onnx", model.read_bytes(), str(model), settings)
    probe.score({"X": x[:3]})  # 3 rows for 2 targets: per target
    assert probe.layouts == {"probabilities": True}
    other = open_scorer("onnx", model.read_bytes(), str(model), settings)
    with pytest.raises(AmbiguousRows):  # on its own, it could not tell
        other.score({"X": x[:2]})
    other.fix_schema({}, probe.layouts)
    got = other.score({"X": x[:2]})
    want = sklearn_models.reference(model, x[:2])
    np.testing.assert_allclose(got["probabilities"], np.stack(want["probabilities"], axis=1),
                               rtol=1e-6)


def test_a_sequence_that_changes_layout_fails_the_batch_naming_the_output() -> None:
    converter = OutputConverter([OutputKind("p", "seq(tensor(float))", "tensors", "float32")],
                                "m.onnx")
    converter.convert([[np.zeros((5, 2), np.float32)] * 3], 5)  # per target, decided
    with pytest.raises(ModelError, match=r"output 'p' \(seq\(tensor\(float\)\)\) has 4 "
                                         r"tensors of shape \(2,\) for 4 input rows; mpiscore "
                                         "needs one tensor per target, 4 rows each"):
        converter.convert([[np.zeros(2, np.float32)] * 4], 4)


def test_output_of_an_unwritable_type_is_refused_in_one_line(tmp_path: Path) -> None:
    optional = helper.make_value_info("maybe", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 6])))
    model = _save(tmp_path / "optional.onnx",
                  [helper.make_node("Optional", ["features"], ["maybe"])], optional)
    with pytest.raises(ModelError) as caught:
        score(model, builders.features(10, width=6), tmp_path / "scores.h5")
    message = str(caught.value)
    assert "\n" not in message
    assert "output 'maybe' has ONNX type optional(tensor(float)), which mpiscore cannot " \
           "write" in message


def transposed_model(path: Path) -> Path:
    """``t``: the features' first two columns, transposed (2 x rows): rows along axis 1."""
    nodes = [helper.make_node("Slice", ["features", "starts", "ends", "axes"], ["two"]),
             helper.make_node("Transpose", ["two"], ["t"], perm=[1, 0])]
    output = helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, "N"])
    constants = [numpy_helper.from_array(np.array(v, np.int64), name)
                 for v, name in (([0], "starts"), ([2], "ends"), ([1], "axes"))]
    return _save(path, nodes, output, constants)


def test_an_output_declared_with_its_rows_along_another_axis_is_refused(tmp_path: Path) -> None:
    """[2, N]: 2 rows of it look like rows x 2; never written transposed, exit 0."""
    model = transposed_model(tmp_path / "t.onnx")
    with pytest.raises(ModelError, match=r"is declared \[2, N\]: its rows are not along the "
                                         "first axis"):
        score(model, builders.features(150, width=6), tmp_path / "scores.h5")
    assert not (tmp_path / "scores.h5.partial").exists()


def test_a_result_whose_rows_lie_along_another_axis_is_told_by_a_second_probe(
        tmp_path: Path) -> None:
    """A script's 2 x rows result: for 2 rows it looks like rows x 2; scored again on 3
    rows, it is refused before anything is written."""
    script = tmp_path / "s.py"
    script.write_text("def run(mini_batch):\n    return mini_batch[:, :2].T.copy()\n")
    data = builders.write_h5(tmp_path / "x.h5", chunks=BATCH, features=builders.features(150))
    out = tmp_path / "scores.h5"
    with pytest.raises(ScoringError, match=r"run\(\) returned 2 results for 3 items|"
                                           r"has shape \(2, 3\) for 3"):
        run(JobConfig(entry_script=script, inputs=(InputSpec(str(data), "/features"),),
                      output=out, batch_size=BatchSize(rows=BATCH), batch_format="numpy",
                      session=SessionConfig(intra_op_threads=1)), comm=None)
    assert not Path(f"{out}.partial").exists()
