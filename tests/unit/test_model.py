"""model.py: binding data fields to model inputs, and describing model outputs."""

from __future__ import annotations

import numpy as np
import pytest

from mpiscore.errors import ConfigError, ModelError
from mpiscore.io.fields import Field
from mpiscore.model import TensorSpec, bind_inputs, output_fields, tensor_spec

MLP = [TensorSpec("features", "float32", (None, 8))]


def data(name: str = "features", dtype: str = "<f4", shape: tuple[int, ...] = (8,),
         flat: bool = False) -> dict[str, Field]:
    return {name: Field(name, dtype, shape, f"x.h5:/{name}", flat)}


# ---- bind_inputs ---------------------------------------------------------------------------


def test_matching_names_bind() -> None:
    (binding,) = bind_inputs("m.onnx", MLP, data(), "safe")
    assert (binding.name, binding.dtype, binding.row_shape) == ("features", "float32", (8,))


def test_several_inputs_bind_in_model_order() -> None:
    specs = [TensorSpec("a", "float32", (None, 4)), TensorSpec("b", "int64", (None, 3))]
    fields = {**data("b", "<i8", (3,)), **data("a", "<f4", (4,))}
    bindings = bind_inputs("m.onnx", specs, fields, "safe")
    assert [(b.name, b.dtype, b.row_shape) for b in bindings] == [
        ("a", "float32", (4,)), ("b", "int64", (3,))]


def test_mismatching_names_raise_naming_both_sides() -> None:
    with pytest.raises(ModelError, match=r"missing features, unknown pixels; "):
        bind_inputs("m.onnx", MLP, data("pixels"), "safe")


def test_missing_input_alone_raises() -> None:
    specs = [*MLP, TensorSpec("mask", "float32", (None, 8))]
    with pytest.raises(ModelError, match=r"missing mask, unknown none"):
        bind_inputs("m.onnx", specs, data(), "safe")


def test_rank_mismatch_raises() -> None:
    with pytest.raises(ModelError, match=r"data rows have shape \(2, 4\).*wants \('N', 8\)"):
        bind_inputs("m.onnx", MLP, data(shape=(2, 4)), "safe")


def test_fixed_dimension_mismatch_raises() -> None:
    with pytest.raises(ModelError, match=r"shape \(7,\)"):
        bind_inputs("m.onnx", MLP, data(shape=(7,)), "safe")


def test_symbolic_inner_dimension_accepts_any_size() -> None:
    specs = [TensorSpec("features", "float32", (None, None))]
    (binding,) = bind_inputs("m.onnx", specs, data(shape=(13,)), "safe")
    assert binding.row_shape == (13,)


def test_safe_upcast_accepted() -> None:
    specs = [TensorSpec("features", "float64", (None, 8))]
    (binding,) = bind_inputs("m.onnx", specs, data(dtype="<f4"), "safe")
    assert binding.dtype == "float64"


def test_lossy_cast_refused_under_safe() -> None:
    with pytest.raises(ModelError, match=r"cannot cast float64 to float32 under --cast safe"):
        bind_inputs("m.onnx", MLP, data(dtype="<f8"), "safe")


@pytest.mark.parametrize("dtype", ["<i8", "<u8"])
def test_64_bit_integers_for_a_float64_model_are_lossy_so_refused_under_safe(dtype) -> None:
    """NumPy calls int64 to float64 safe; 2**53 + 1 becomes 2**53 in it."""
    specs = [TensorSpec("features", "float64", (None, 8))]
    with pytest.raises(ModelError, match=rf"cannot cast {np.dtype(dtype)} to float64 under "
                                         r"--cast safe.*pass --cast same_kind only if"):
        bind_inputs("m.onnx", specs, data(dtype=dtype), "safe")
    (binding,) = bind_inputs("m.onnx", specs, data(dtype=dtype), "same_kind")
    assert binding.dtype == "float64"
    (binding,) = bind_inputs("m.onnx", specs, data(dtype="<i4"), "safe")  # exact in float64
    assert binding.dtype == "float64"


def test_lossy_cast_accepted_under_same_kind() -> None:
    (binding,) = bind_inputs("m.onnx", MLP, data(dtype="<f8"), "same_kind")
    assert binding.dtype == "float32"


def test_float_into_integer_model_refused_under_same_kind() -> None:
    specs = [TensorSpec("features", "int64", (None, 8))]
    with pytest.raises(ModelError, match="cannot cast"):
        bind_inputs("m.onnx", specs, data(dtype="<f4"), "same_kind")
    (binding,) = bind_inputs("m.onnx", specs, data(dtype="<f4"), "unsafe")
    assert binding.dtype == "int64"


def stacked(*columns: tuple[str, str], spec_dtype: str = "float32") -> tuple[
        list[TensorSpec], dict[str, Field]]:
    """Parquet columns of several dtypes stacked into one input, as parquet.describe makes
    them: ``dtype`` is NumPy's promotion of the columns' own dtypes."""
    dtype = np.result_type(*[d for _, d in columns]).str
    where = f"x.parquet:{','.join(c for c, _ in columns)}"
    field = Field("X", dtype, (len(columns),), where, flat=True, column_dtypes=columns)
    return [TensorSpec("X", spec_dtype, (None, len(columns)))], {"X": field}


FLOATS = tuple((f"f{i}", "<f4") for i in range(7))


def test_int_column_among_float_columns_is_refused_by_its_own_dtype() -> None:
    """int64 id with float32 features promotes to float64: the old message said "the data
    is float64" and advised --cast same_kind, which then scored the id as a feature."""
    specs, fields = stacked(*FLOATS, ("id", "<i8"))
    with pytest.raises(ModelError) as caught:
        bind_inputs("m.onnx", specs, fields, "safe")
    message = str(caught.value)
    assert ("cannot cast int64 to float32 under --cast safe: column id is int64 among "
            "float32 columns, the model input float32; ") in message
    assert ("check which data feeds this input (--columns, --map) and pass --cast same_kind "
            "only if id values are meant for it") in message
    assert "float64" not in message and "round" not in message


def test_int_column_among_float_columns_is_refused_where_numpy_calls_it_safe() -> None:
    """int64 -> float64 and bool -> float32 are NumPy-safe, but among float columns an integer
    is an id or a label as often as not: --cast same_kind says it is meant."""
    specs, fields = stacked(("id", "<i8"), ("f0", "<f8"), ("f1", "<f8"), spec_dtype="float64")
    with pytest.raises(ModelError, match=r"column id is int64 among float64 columns.*"
                                         r"--cast same_kind only if id values are meant"):
        bind_inputs("m.onnx", specs, fields, "safe")
    specs, fields = stacked(("flag", "|b1"), ("label", "<i2"), *FLOATS)
    with pytest.raises(ModelError, match=r"columns flag \(bool\), label \(int16\) are among "
                                         r"float32 columns.*only if flag, label values"):
        bind_inputs("m.onnx", specs, fields, "safe")


@pytest.mark.parametrize("cast", ["same_kind", "unsafe"])
def test_int_column_among_float_columns_binds_when_the_cast_says_it_is_meant(cast) -> None:
    """As a single int64 column does: --cast same_kind is what the message asks for."""
    specs, fields = stacked(*FLOATS, ("id", "<i8"))
    (binding,) = bind_inputs("m.onnx", specs, fields, cast)
    assert (binding.dtype, binding.row_shape) == ("float32", (8,))


def test_float64_columns_among_float32_are_named_and_advised_same_kind() -> None:
    specs, fields = stacked(("f0", "<f8"), ("f1", "<f8"), *FLOATS[2:])
    with pytest.raises(ModelError) as caught:
        bind_inputs("m.onnx", specs, fields, "safe")
    assert str(caught.value) == (
        "x.parquet:f0,f1,f2,f3,f4,f5,f6 -> m.onnx input 'X': cannot cast float64 to float32 "
        "under --cast safe: columns f0, f1 are float64 (the others float32), the model input "
        "float32; pass --cast same_kind to round them to float32")
    (binding,) = bind_inputs("m.onnx", specs, fields, "same_kind")
    assert binding.dtype == "float32"


def test_lossless_float_mix_binds_under_safe() -> None:
    specs, fields = stacked(("h0", "<f2"), *FLOATS)
    (binding,) = bind_inputs("m.onnx", specs, fields, "safe")
    assert binding.dtype == "float32"


def test_float_column_among_int_columns_of_an_int_model_is_named() -> None:
    specs, fields = stacked(("a", "<i8"), ("score", "<f4"), ("b", "<i4"), spec_dtype="int64")
    with pytest.raises(ModelError, match=r"cannot cast float32 to int64 under --cast same_kind: "
                                         r"column score is float32 \(the others int32/int64\).*"
                                         r"--cast unsafe only if score values"):
        bind_inputs("m.onnx", specs, fields, "same_kind")


def test_flat_parquet_field_reshaped_to_fixed_row_shape() -> None:
    specs = [TensorSpec("image", "float32", (None, 3, 8, 8))]
    (binding,) = bind_inputs("m.onnx", specs, data("image", shape=(192,), flat=True), "safe")
    assert binding.row_shape == (3, 8, 8)


def test_flat_field_of_the_wrong_size_raises() -> None:
    specs = [TensorSpec("image", "float32", (None, 3, 8, 8))]
    with pytest.raises(ModelError, match=r"\(191,\)"):
        bind_inputs("m.onnx", specs, data("image", shape=(191,), flat=True), "safe")


def test_hdf5_field_is_never_reshaped() -> None:
    specs = [TensorSpec("image", "float32", (None, 3, 8, 8))]
    with pytest.raises(ModelError, match="model wants"):
        bind_inputs("m.onnx", specs, data("image", shape=(192,), flat=False), "safe")


def test_flat_field_not_reshaped_to_a_symbolic_shape() -> None:
    specs = [TensorSpec("image", "float32", (None, 3, None, 8))]
    with pytest.raises(ModelError, match="model wants"):
        bind_inputs("m.onnx", specs, data("image", shape=(192,), flat=True), "safe")


def test_error_names_the_data_and_the_model_input() -> None:
    with pytest.raises(ModelError, match=r"x\.h5:/features -> m\.onnx input 'features'"):
        bind_inputs("m.onnx", MLP, data(shape=(9,)), "safe")


# ---- TensorSpec / tensor_spec --------------------------------------------------------------


class NodeArg:
    def __init__(self, name: str, type: str, shape: list[object]) -> None:
        self.name, self.type, self.shape = name, type, shape


def test_tensor_spec_from_node_arg() -> None:
    spec = tensor_spec(NodeArg("x", "tensor(double)", ["N", 3, None, 0]), "m.onnx")
    assert spec == TensorSpec("x", "float64", (None, 3, None, None))
    assert spec.fixed_batch is None
    assert tensor_spec(NodeArg("y", "tensor(int64)", [4, 2]), "m").fixed_batch == 4


def test_non_tensor_input_refused() -> None:
    """Only inputs are described this way (outputs: scoring/scorers/onnx_outputs.py,
    which handles ZipMap)."""
    with pytest.raises(ModelError, match=r"input 'probabilities' has type seq\(map\(int64,"
                       r"tensor\(float\)\)\); mpiscore feeds numeric tensor inputs only"):
        tensor_spec(NodeArg("probabilities", "seq(map(int64,tensor(float)))", []), "m.onnx")


# ---- output_fields -------------------------------------------------------------------------


def test_output_fields_describe_each_output() -> None:
    outputs = {"logits": np.zeros((5, 3), np.float32), "label": np.zeros(5, np.int64),
               "scope/emb": np.zeros((5, 2, 4), np.float64)}
    fields = output_fields(outputs, {"logits": "score"}, 5, "m.onnx")
    assert [(f.name, f.dtype, f.shape) for f in fields] == [
        ("score", np.dtype(np.float32).str, (3,)), ("label", np.dtype(np.int64).str, ()),
        ("scope_emb", np.dtype(np.float64).str, (2, 4))]


def test_output_with_the_wrong_first_dimension_raises() -> None:
    with pytest.raises(ModelError, match=r"output 'pooled' has shape \(1, 3\) for 5 input rows"):
        output_fields({"pooled": np.zeros((1, 3), np.float32)}, {}, 5, "m.onnx")


def test_scalar_output_raises() -> None:
    with pytest.raises(ModelError, match="one output row per input row"):
        output_fields({"loss": np.float32(1.0) * np.ones(())}, {}, 5, "m.onnx")


def test_rename_of_an_unknown_output_raises() -> None:
    with pytest.raises(ModelError, match=r"--rename logit: not an output of the model; its "
                       "outputs: logits$"):
        output_fields({"logits": np.zeros((2, 3), np.float32)}, {"logit": "score"}, 2, "m.onnx")


def test_output_names_must_not_collide() -> None:
    outputs = {"logits": np.zeros((2, 3), np.float32), "label": np.zeros(2, np.int64)}
    with pytest.raises(ConfigError, match="output name label is taken"):
        output_fields(outputs, {"logits": "label"}, 2, "m.onnx")
    with pytest.raises(ConfigError, match="row_status"):
        output_fields(outputs, {"logits": "row_status"}, 2, "m.onnx")
    slashed = {"a/b": np.zeros(2, np.float32), "a_b": np.zeros(2, np.float32)}
    with pytest.raises(ConfigError, match="a_b"):
        output_fields(slashed, {}, 2, "m.onnx")
