"""scoring/scorers/script.py: entry scripts (init/run/shutdown) as a scorer kind, and the
azureml_user.parallel_run shim. Real script files in tmp_path, real pandas and pyarrow."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mpiscore.config import ScorerSettings, ScriptSettings, SessionConfig
from mpiscore.errors import ConfigError, ModelError, ScoringError
from mpiscore.io.fields import FILE_PATHS, HEADER, LINES
from mpiscore.model import Column
from mpiscore.scoring.scorers.script import COMPAT_DIR, ScriptScorer

Opener = Callable[..., ScriptScorer]


@pytest.fixture
def open_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Opener]:
    """Writes ``body`` to ``tmp_path/name`` and opens it as the user would name it
    (relative to the current directory, tmp_path), with rank 3's settings."""
    monkeypatch.chdir(tmp_path)
    opened: list[ScriptScorer] = []

    def opener(body: str, name: str = "score.py", **options: object) -> ScriptScorer:
        (tmp_path / name).write_text(textwrap.dedent(body))
        script = ScriptSettings(path=name, log_dir=str(tmp_path / "logs"),
                                output_dir=str(tmp_path / "out"), **options)
        settings = ScorerSettings(SessionConfig(), 1, rank=3, script=script)
        scorer = ScriptScorer.open((tmp_path / name).read_bytes(), name, settings)
        opened.append(scorer)
        return scorer

    yield opener
    for scorer in reversed(opened):
        scorer._restore()


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "logs" / f"script-rank3-pid{os.getpid()}.log").read_text()


def listed(columns: dict[str, object], key: str = "result") -> list[object]:
    """A result column's values as a list."""
    return np.asarray(columns[key]).tolist()


def parquet(**columns: list[object]) -> dict[str, object]:
    """Feeds as a Parquet reader gives them: ChunkedArrays of the columns read."""
    return {name: pa.chunked_array([values]) for name, values in columns.items()}


# -- what run() returns, row-wise

def test_a_dataframe_result_is_one_column_per_dataframe_column(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return mini_batch.assign(double=mini_batch.x * 2, label=["a", "bb", "c"])[
                ["double", "label"]]
    """)
    columns = scorer.score(parquet(x=[1.0, 2.0, 3.0]))
    assert list(columns) == ["double", "label"]
    np.testing.assert_array_equal(columns["double"], [2.0, 4.0, 6.0])
    assert list(columns["label"]) == ["a", "bb", "c"]
    assert scorer.columns == {"double": Column("double"), "label": Column("label")}
    assert scorer.inputs == [] and scorer.fixed_batch is None and scorer.label_width == 64


def test_an_array_result_is_the_column_result(open_script: Opener) -> None:
    scorer = open_script("""
        import numpy as np
        def run(mini_batch):
            return np.stack([mini_batch, -mini_batch], axis=1)
    """)
    columns = scorer.score({"x": np.arange(4.0)})
    assert list(columns) == ["result"]
    np.testing.assert_array_equal(columns["result"], [[0, 0], [1, -1], [2, -2], [3, -3]])


def test_a_dict_result_is_one_column_per_key(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            total = mini_batch["a"] + mini_batch["b"]
            return {"total": total, "ids": list(range(len(total)))}
    """, batch_format="numpy")
    columns = scorer.score(parquet(a=[1, 2], b=[10, 20]))
    np.testing.assert_array_equal(columns["total"], [11, 22])
    np.testing.assert_array_equal(columns["ids"], [0, 1])


def test_a_list_result_is_the_column_result(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return [f"file {p}" for p in mini_batch]
    """)
    columns = scorer.score({FILE_PATHS: ["a.png", "b.png"]})
    assert listed(columns) == ["file a.png", "file b.png"]


def test_results_never_share_memory_with_the_reused_input_buffers(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return mini_batch
    """)
    feed = np.arange(5.0)
    result = scorer.score({"x": feed})["result"]
    feed[:] = -1  # the reader's next read
    np.testing.assert_array_equal(result, np.arange(5.0))


# -- what run() gets

@pytest.mark.parametrize(("batch_format", "kind"), [
    ("pandas", "DataFrame"), ("numpy", "dict"), ("arrow", "Table")])
def test_parquet_columns_arrive_in_the_batch_format(open_script: Opener, batch_format: str,
                                                    kind: str) -> None:
    scorer = open_script("""
        import numpy as np
        def run(mini_batch):
            x = np.asarray(mini_batch["x"])
            return {"kind": [type(mini_batch).__name__] * len(x), "x2": x * 2}
    """, batch_format=batch_format)
    columns = scorer.score(parquet(x=[1, 2, 3], name=["p", "q", "r"]))
    assert listed(columns, "kind") == [kind] * 3
    np.testing.assert_array_equal(columns["x2"], [2, 4, 6])


@pytest.mark.parametrize(("feeds", "mapped", "kind"), [
    ({"x": np.zeros((3, 2))}, False, "ndarray"), ({"x": np.zeros((3, 2))}, True, "dict"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(3)}, False, "dict")])
def test_hdf5_arrays_arrive_as_numpy_whatever_the_batch_format(
        open_script: Opener, feeds: dict[str, object], mapped: bool, kind: str) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return [type(mini_batch).__name__] * 3
    """, mapped=mapped, batch_format="pandas")
    assert listed(scorer.score(feeds)) == [kind] * 3


def test_file_input_arrives_as_a_list_of_paths(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            assert isinstance(mini_batch, list)
            return [str(type(p).__name__) + ":" + p for p in mini_batch]
    """)
    columns = scorer.score({FILE_PATHS: ["x/1.npy", "x/2.npy", "x/3.npy"]})
    assert listed(columns) == ["str:x/1.npy", "str:x/2.npy", "str:x/3.npy"]


def test_a_missing_pandas_names_the_install(open_script: Opener,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = open_script("def run(mini_batch):\n    return mini_batch\n")
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ConfigError, match=re.escape(
            "--batch-format pandas needs pandas: pip install 'mpiscore[scripts]'")):
        scorer.score(parquet(x=[1]))


# -- the script's environment: argv, sys.path, logs, EntryScript

def test_arguments_after_the_double_dash_reach_parse_known_args(open_script: Opener) -> None:
    scorer = open_script("""
        import argparse, sys
        def init():
            global args
            parser = argparse.ArgumentParser()
            parser.add_argument("--model_dir")
            args, _ = parser.parse_known_args()
        def run(mini_batch):
            return [args.model_dir, sys.argv[0]]
    """, args=("--model_dir", "./model", "--unknown", "1"))
    assert listed(scorer.score({FILE_PATHS: ["a", "b"]})) == ["./model", "score.py"]


def test_the_scripts_directory_comes_first_and_the_shim_last_on_the_path(
        open_script: Opener, tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("FACTOR = 7\n")
    before = list(sys.path)
    scorer = open_script("""
        import helpers
        def run(mini_batch):
            return [helpers.FACTOR] * len(mini_batch)
    """)
    assert sys.path[0] == str(tmp_path.resolve()) and sys.path[-1] == str(COMPAT_DIR)
    assert listed(scorer.score({FILE_PATHS: ["a"]})) == [7]
    scorer.close()
    assert sys.path == before and "score" not in sys.modules


def test_a_script_named_like_another_module_does_not_shadow_it(open_script: Opener) -> None:
    scorer = open_script("def run(mini_batch):\n    return [__name__] * len(mini_batch)\n",
                         name="json.py")
    import json

    assert listed(scorer.score({FILE_PATHS: ["a"]})) == ["mpiscore_entry_json"]
    assert json.dumps([1]) == "[1]" and sys.modules["json"] is json


def test_print_logging_and_the_entry_script_logger_land_in_the_process_log(
        open_script: Opener, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scorer = open_script("""
        import logging, sys
        from azureml_user.parallel_run import EntryScript
        def init():
            assert sys.stdout.encoding == "utf-8" and not sys.stdout.isatty()
            print("hello from init")
            EntryScript().logger.info("loaded the model")
        def run(mini_batch):
            logging.getLogger("mine").info("scoring %d items", len(mini_batch))
            print("oops", file=sys.stderr)
            return mini_batch
    """)
    scorer.score({FILE_PATHS: ["a", "b"]})
    log, tag = log_text(tmp_path), f"rank 3 pid {os.getpid()}"
    for message in ("stdout: hello from init", "EntryScript: loaded the model",
                    "mine: scoring 2 items", "stderr: oops"):
        line = next(line for line in log.splitlines() if message in line)
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \w+ " + tag, line), line
    assert "INFO " + tag + " mine" in log and "INFO " + tag + " EntryScript" in log
    assert "hello" not in capsys.readouterr().out


def test_entry_script_is_a_singleton_naming_the_jobs_directories(
        open_script: Opener, tmp_path: Path) -> None:
    scorer = open_script("""
        import os
        from azureml_user.parallel_run import EntryScript
        def init():
            global first
            first = EntryScript()
        def run(mini_batch):
            helper = EntryScript()
            os.makedirs(helper.output_dir, exist_ok=True)
            return [str(helper is first), helper.output_dir, helper.working_dir,
                    helper.log_dir, helper.agent_name]
    """)
    values = listed(scorer.score({FILE_PATHS: list("abcde")}))
    assert values == ["True", str(tmp_path / "out"), str(tmp_path), str(tmp_path / "logs"),
                      f"rank3-pid{os.getpid()}"]
    assert (tmp_path / "out").is_dir()


def test_close_calls_shutdown_and_restores_argv(open_script: Opener, tmp_path: Path) -> None:
    argv = list(sys.argv)
    scorer = open_script("""
        def run(mini_batch):
            return mini_batch
        def shutdown():
            with open("shut.txt", "w") as f:
                f.write("bye")
    """, args=("--x",))
    assert sys.argv == ["score.py", "--x"]
    scorer.close()
    assert (tmp_path / "shut.txt").read_text() == "bye" and sys.argv == argv


# -- failures the user can read

def test_init_raising_names_the_users_innermost_line(open_script: Opener,
                                                     tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        open_script("""
            def load(path):
                raise ValueError("bad weights")

            def init():
                load("w.npz")

            def run(mini_batch):
                return mini_batch
        """)
    assert re.fullmatch(r"score\.py, line 3, in load: ValueError: bad weights \(traceback in "
                        r".*script-rank3-pid\d+\.log\)", str(caught.value)), str(caught.value)
    log = log_text(tmp_path)
    assert 'line 6, in init' in log and 'raise ValueError("bad weights")' in log
    assert "scorers/script.py" not in log  # mpiscore's own frames are left out
    assert "score" not in sys.modules and str(COMPAT_DIR) not in sys.path  # undone


def test_argparse_exiting_in_init_says_why(open_script: Opener) -> None:
    with pytest.raises(ModelError, match=r"score\.py, line \d+, in init: exited with status 2: "
                                         r".*the following arguments are required: --model_dir"):
        open_script("""
            import argparse
            def init():
                parser = argparse.ArgumentParser()
                parser.add_argument("--model_dir", required=True)
                parser.parse_known_args()
            def run(mini_batch):
                return mini_batch
        """)


def test_run_raising_fails_the_batch_naming_the_line(open_script: Opener,
                                                     tmp_path: Path) -> None:
    scorer = open_script("""
        def run(mini_batch):
            row = {}
            return row["x"]
    """)
    with pytest.raises(ScoringError, match=r"^score\.py, line 4, in run: KeyError: 'x' "
                                           r"\(traceback in .*\.log\)$") as caught:
        scorer.score({FILE_PATHS: ["a"]})
    assert 'return row["x"]' in caught.value.script_traceback
    assert "KeyError: 'x'" in log_text(tmp_path)


def test_a_syntax_error_is_not_python(open_script: Opener) -> None:
    with pytest.raises(ModelError, match=r"^score\.py, line 3: not Python: .*"):
        open_script("def init():\n    pass\ndef run(mini_batch:\n    return 1\n")


def test_a_script_without_run_is_refused(open_script: Opener) -> None:
    with pytest.raises(ModelError, match=re.escape(
            "score.py: has no run(mini_batch) function; an entry script defines init() "
            "(optional) and run(mini_batch)")):
        open_script("def init():\n    pass\nrun = 3\n")


def test_an_import_failing_in_the_script_names_its_line(open_script: Opener) -> None:
    with pytest.raises(ModelError, match=r"score\.py, line 2, in <module>: ModuleNotFoundError"):
        open_script("import os\nimport no_such_module_here\ndef run(b):\n    return b\n")


@pytest.mark.parametrize(("body", "message"), [
    ("return None", "run() returned None for 3 items; return one result per item"),
    ("return [1, 2]", "run() returned 2 results for 3 items (column 'result')"),
    ("return {'score': [1, 2, 3, 4, 5]}", "run() returned 5 results for 3 items (column 'score')"),
    ("return {1, 2, 3}", "run() returned a set; return one result per item"),
    ("return 'abc'", "run() returned a str"),
    ("return [{'a': 1}, {'a': 2}, {'a': 3}]", "run() returned column 'result' holding dict values"),
])
def test_results_that_are_not_one_per_item_fail_the_batch(open_script: Opener, body: str,
                                                          message: str) -> None:
    scorer = open_script(f"def run(mini_batch):\n    {body}\n")
    with pytest.raises(ScoringError, match=r"^score\.py: " + re.escape(message)):
        scorer.score({FILE_PATHS: ["a", "b", "c"]})


def test_the_first_result_fixes_the_columns(open_script: Opener) -> None:
    scorer = open_script("""
        import numpy as np
        calls = 0
        def run(mini_batch):
            global calls
            calls += 1
            n = len(mini_batch)
            if calls == 1:
                return {"score": np.zeros(n), "vec": np.zeros((n, 2))}
            if calls == 2:
                return {"score": np.arange(n), "vec": np.ones((n, 2), dtype=np.float32)}
            if calls == 3:
                return {"other": np.zeros(n), "vec": np.zeros((n, 2))}
            if calls == 4:
                return {"score": np.zeros(n), "vec": np.zeros((n, 3))}
            return {"score": np.array(["x"] * n), "vec": np.zeros((n, 2))}
    """)
    batch = {FILE_PATHS: ["a", "b"]}
    scorer.score(batch)
    castable = scorer.score(batch)  # int and float32 after float64: cast to the first dtype
    assert castable["score"].dtype == np.float64 and castable["vec"].dtype == np.float64
    with pytest.raises(ScoringError, match=r"columns other, vec; the first batch had score, vec"):
        scorer.score(batch)
    with pytest.raises(ScoringError, match=r"column 'vec' with rows of shape \(3,\); the first "
                                           r"batch's were \(2,\)"):
        scorer.score(batch)
    with pytest.raises(ScoringError, match=r"column 'score' as <U1; the first batch's was "
                                           r"float64"):
        scorer.score(batch)


def test_a_float_result_after_int_ones_is_refused(open_script: Opener) -> None:
    scorer = open_script("""
        import numpy as np
        def run(mini_batch):
            return np.full(len(mini_batch), 1.5 if mini_batch[0] == "f" else 1)
    """)
    scorer.score({FILE_PATHS: ["i"]})
    with pytest.raises(ScoringError, match=r"column 'result' as float64; the first batch's was "
                                           r"int64"):
        scorer.score({FILE_PATHS: ["f"]})


def test_a_fixed_schema_holds_a_processes_first_batch_to_the_probes(open_script: Opener) -> None:
    scorer = open_script("def run(mini_batch):\n    return {'label': mini_batch}\n")
    scorer.fix_schema({"score": ("<f8", ())}, {})
    with pytest.raises(ScoringError, match=r"columns label; the first batch had score"):
        scorer.score({FILE_PATHS: ["a"]})


# -- append_row and summary_only

def test_append_row_writes_str_of_each_element(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return [(p, len(p)) for p in mini_batch]
    """, output_action="append_row")
    assert scorer.score({FILE_PATHS: ["ab", "c"]}) == {LINES: ["('ab', 2)", "('c', 1)"]}


def test_append_row_writes_dataframe_rows_separated_by_a_space(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return mini_batch.assign(p=mini_batch.x / 2)
    """, output_action="append_row")
    assert scorer.score(parquet(x=[1, 3], name=["a", "b c"])) == {
        LINES: ["1 a 0.5", "3 b c 1.5"]}


def test_append_row_to_csv_writes_csv_records_and_the_header(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return mini_batch
    """, output_action="append_row", csv=True)
    assert scorer.score(parquet(id=[1, 2], text=["plain", "a, b"])) == {
        LINES: ["1,plain", '2,"a, b"'], HEADER: "id,text"}


def test_append_row_refuses_more_lines_than_items_and_takes_fewer(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return mini_batch * 2 if mini_batch[0] == "more" else mini_batch[1:]
    """, output_action="append_row")
    assert scorer.score({FILE_PATHS: ["fewer", "b", "c"]}) == {LINES: ["b", "c"]}
    with pytest.raises(ScoringError, match=r"returned 4 results for 2 items; append_row takes "
                                           r"at most one per item"):
        scorer.score({FILE_PATHS: ["more", "b"]})


def test_append_row_refuses_an_element_with_a_line_break(open_script: Opener) -> None:
    scorer = open_script("def run(mini_batch):\n    return ['ok', 'two\\nlines']\n",
                         output_action="append_row")
    with pytest.raises(ScoringError, match=r"item 1 with a line break \('two\\nlines'\)"):
        scorer.score({FILE_PATHS: ["a", "b"]})


def test_summary_only_ignores_the_result(open_script: Opener, tmp_path: Path) -> None:
    scorer = open_script("""
        import os
        from azureml_user.parallel_run import EntryScript
        def run(mini_batch):
            for path in mini_batch:
                with open(os.path.join(EntryScript().output_dir, path + ".out"), "w") as f:
                    f.write(path)
            return None
    """, output_action="summary_only")
    (tmp_path / "out").mkdir()
    assert scorer.score({FILE_PATHS: ["a", "b"]}) == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.out", "b.out"]


def test_without_a_log_directory_the_log_is_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.py").write_text("def run(b):\n    print('said')\n    return b\n")
    settings = ScorerSettings(SessionConfig(), 1, rank=1, script=ScriptSettings(path="s.py"))
    scorer = ScriptScorer.open(b"def run(b):\n    print('said')\n    return b\n", "s.py",
                               settings)
    try:
        scorer.score({FILE_PATHS: ["a"]})
    finally:
        scorer.close()
    assert f"PRINT rank 1 pid {os.getpid()} stdout: said" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_shutdown_raising_is_a_model_error_after_the_cleanup(open_script: Opener) -> None:
    scorer = open_script("""
        def run(mini_batch):
            return mini_batch
        def shutdown():
            raise RuntimeError("flush failed")
    """)
    with pytest.raises(ModelError, match=r"score\.py, line 5, in shutdown: RuntimeError: "
                                         r"flush failed"):
        scorer.close()
    assert str(COMPAT_DIR) not in sys.path


def test_integers_that_do_not_fit_the_first_batchs_type_are_refused(open_script: Opener) -> None:
    scorer = open_script("""
        import numpy as np
        def run(mini_batch):
            big = mini_batch[0] == "big"
            return np.array([2**40 if big else 1], dtype=np.int64 if big else np.int32)
    """)
    scorer.score({FILE_PATHS: ["small"]})
    with pytest.raises(ScoringError, match=r"column 'result' as int64; the first batch's was "
                                           r"int32"):
        scorer.score({FILE_PATHS: ["big"]})


def test_append_row_refuses_a_dict_of_unequal_columns(open_script: Opener) -> None:
    scorer = open_script("def run(b):\n    return {'a': [1, 2], 'b': [1]}\n",
                         output_action="append_row")
    with pytest.raises(ScoringError, match=r"a dict of columns of lengths 2, 1"):
        scorer.score({FILE_PATHS: ["x", "y"]})


def test_a_result_s_kind_never_reads_a_half_imported_pandas(monkeypatch) -> None:
    """The writer thread may be importing pandas (through pyarrow) while run()'s list of
    strings is looked at: ``sys.modules`` then holds a pandas without DataFrame yet."""
    import types

    import pandas

    from mpiscore.scoring.scorers.script_results import result_kind

    frame = pandas.DataFrame({"a": [1]})
    monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))  # half made
    assert result_kind(["f1.txt", "f2.txt"]) == ""
    assert result_kind(np.zeros(2)) == ""
    monkeypatch.setitem(sys.modules, "pandas", pandas)
    assert result_kind(frame) == "frame" and result_kind(frame["a"]) == "series"
    assert result_kind(pa.table({"a": [1]})) == "table"


def test_a_nullable_integer_column_with_missing_values_is_refused_not_rounded() -> None:
    """pandas turns Int64 with NA into float64 with NaN: 2**60 + 1 would become 2**60."""
    import pandas

    from mpiscore.scoring.scorers.script_results import result_columns

    big = 2**60 + 1
    whole = pandas.DataFrame({"v": pandas.array([big, 2], dtype="Int64")})
    assert result_columns(whole, "s.py")["v"].tolist() == [big, 2]
    gaps = pandas.DataFrame({"v": pandas.array([big, None], dtype="Int64")})
    with pytest.raises(ScoringError, match=r"s\.py: run\(\) returned column 'v' \(Int64\) "
                                           r"with missing values \(first at row 1\)"):
        result_columns(gaps, "s.py")
    with pytest.raises(ScoringError, match=r"column 'flag' \(boolean\)"):
        result_columns(pandas.Series([True, None], dtype="boolean", name="flag"), "s.py")
    floats = pandas.DataFrame({"f": pandas.array([1.5, None], dtype="Float64")})
    assert np.isnan(result_columns(floats, "s.py")["f"][1])  # a float's NaN is a value


def test_an_init_that_changes_directory_is_changed_back(open_script: Opener,
                                                        tmp_path: Path) -> None:
    """The job's relative paths (its partial output, run directory) stay where they are:
    init() moving elsewhere is undone (before any reader or writer thread runs), and said
    in the log."""
    (tmp_path / "elsewhere").mkdir()
    scorer = open_script("""
        import os

        def init():
            os.chdir("elsewhere")

        def run(mini_batch):
            return [os.getcwd()] * len(mini_batch)
        """)
    assert os.getcwd() == str(tmp_path)
    assert str(scorer.score({"x": np.zeros((2, 1))})).count(str(tmp_path)) >= 1
    log = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*") if p.is_file())
    assert log.count("init() changed the working directory") == 1, log


def test_a_frame_with_no_columns_or_a_name_twice_is_refused() -> None:
    import pandas

    from mpiscore.scoring.scorers.script_results import result_columns

    with pytest.raises(ScoringError, match="returned a DataFrame with no columns"):
        result_columns(pandas.DataFrame(index=range(3)), "s.py")
    twice = pandas.DataFrame([[1, 2]], columns=["x", "x"])
    with pytest.raises(ScoringError, match="more than one column named x; return one"):
        result_columns(twice, "s.py")
    assert list(result_columns(pandas.DataFrame({0: [1], "b": [2]}), "s.py")) == ["0", "b"]
