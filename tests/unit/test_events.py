"""The events file (both ends: rank/recorder.py writes, events.py reads) and the report
built from it (run_report.py), on run directories made here: no MPI."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from mpiscore.errors import ConfigError, InputError
from mpiscore.events import OUTCOMES, EventLog, events_path, read_events, stages, try_line
from mpiscore.plan import Batch
from mpiscore.rank.recorder import Recorder, read_usage
from mpiscore.run_report import build_report, describe_report, draw
from mpiscore.wire import StageTimes


def batch(batch_id: int, rows: int = 10) -> Batch:
    return Batch(batch_id, 0, batch_id * rows, batch_id * rows + rows, batch_id * rows)


def one_try(recorder: Recorder, lane: int, b: Batch, attempt: int, outcome: str,
            seconds: float = 0.01) -> None:
    recorder.sent(lane, b, attempt)
    time.sleep(seconds / 2)
    if outcome == "ok":
        recorder.scored(b.batch_id)
    time.sleep(seconds / 2)
    recorder.ended(b, outcome, StageTimes(0.002, 0.003, 0.001) if outcome == "ok" else None)


def recorded_run(run_dir: Path, token: str = "run-b", fresh: bool = True) -> None:
    """Rank 0 (2 processes) scores batches 0-3 (batch 2 fails once, then is retried on
    rank 1); rank 1 (1 process) scores 4-5; rank 1 has a process killed with batch 7
    queued behind batch 6."""
    zero = Recorder(run_dir, 0, token, 2, fresh, 0.0, lambda: [])
    one = Recorder(run_dir, 1, token, 1, fresh, 0.0, lambda: [])
    one_try(zero, 0, batch(0), 0, "ok")
    one_try(zero, 1, batch(1), 0, "ok")
    one_try(zero, 0, batch(2), 0, "failed")
    one_try(zero, 1, batch(3), 0, "ok")
    one_try(one, 0, batch(4), 0, "ok")
    one_try(one, 0, batch(2), 1, "ok")
    one_try(one, 0, batch(5), 0, "ok", seconds=0.8)  # a straggler
    one.sent(0, batch(6), 0)
    one.sent(0, batch(7), 0)
    one.ended(batch(6), "failed")
    one.ended(batch(7), "returned")
    zero.close()
    one.close()


def write_summary(run_dir: Path, **fields: object) -> dict:
    summary = {"status": "complete", "rows_scored": 60, "wall_seconds": 1.25,
               "rows_per_second": 48.0, "setup_seconds": 0.5, **fields}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def test_a_run_is_recorded_and_read_back_per_rank_and_lane(tmp_path) -> None:
    recorded_run(tmp_path)
    events = read_events(tmp_path)
    assert events is not None
    assert events.lanes == {0: 2, 1: 1} and set(events.hosts) == {0, 1}
    got = {(b["rank"], b["p"], b["id"], b["try"], b["out"]) for b in events.tries}
    assert got == {(0, 0, 0, 0, "ok"), (0, 1, 1, 0, "ok"), (0, 0, 2, 0, "failed"),
                   (0, 1, 3, 0, "ok"), (1, 0, 4, 0, "ok"), (1, 0, 2, 1, "retried"),
                   (1, 0, 5, 0, "ok"), (1, 0, 6, 0, "failed"), (1, 0, 7, 0, "returned")}
    ok = next(b for b in events.tries if b["id"] == 0)
    assert (ok["read"], ok["score"], ok["write"], ok["rows"]) == (0.002, 0.003, 0.001, 10)
    assert ok["sent"] <= ok["scored"] <= ok["end"]
    assert abs(ok["end"] - time.time()) < 30  # epoch seconds, comparable between ranks


def test_a_try_s_line_is_the_json_of_its_values_at_their_precision() -> None:
    times = (1764780000.123456, 1764780000.133449, 1764780000.99995)
    line = try_line(3, 12345, 2, 768, "ok", times, (0.0012345, 0.0101236, 0.00057))
    assert json.loads(line) == {"k": "b", "p": 3, "id": 12345, "try": 2, "rows": 768,
                                "out": "ok", "sent": round(times[0], 4),
                                "scored": round(times[1], 4), "end": round(times[2], 4),
                                "read": 0.00123, "score": 0.01012, "write": 0.00057}
    for outcome in OUTCOMES:  # a try that was never scored has neither
        record = json.loads(try_line(0, 1, 0, 10, outcome, (1.0, None, 2.5), None))
        assert record == {"k": "b", "p": 0, "id": 1, "try": 0, "rows": 10, "out": outcome,
                          "sent": 1.0, "end": 2.5}


def test_stages_are_placed_from_the_ranks_times_and_the_measured_durations() -> None:
    record = {"sent": 100.0, "scored": 100.5, "end": 101.0, "read": 0.1, "score": 0.2,
              "write": 0.3}
    assert stages(record) == {"read": pytest.approx((100.2, 100.3)),
                              "score": pytest.approx((100.3, 100.5)),
                              "write": pytest.approx((100.7, 101.0))}
    # never before the rank handed it over, never a write before its score ended
    squeezed = {"sent": 100.0, "scored": 100.1, "end": 100.2, "read": 1.0, "score": 1.0,
                "write": 1.0}
    assert stages(squeezed) == {"read": (100.0, 100.0), "score": (100.0, 100.1),
                                "write": (100.1, 100.2)}
    assert stages({"sent": 1.0, "end": 2.0}) == {"span": (1.0, 2.0)}


def test_torn_lines_are_skipped_and_only_the_last_run_is_read(tmp_path) -> None:
    recorded_run(tmp_path, token="run-a")
    recorded_run(tmp_path, token="run-b", fresh=False)  # a resumed run appends
    with events_path(tmp_path, 0).open("a") as handle:
        handle.write('{"k":"b","p":0,"id":9,"try":0,"rows":10,"out":"ok","sent":1.0,"e')
    events = read_events(tmp_path)
    assert events is not None and events.run == "run-b"
    assert len(events.tries) == 9  # not 18, and not the torn one
    recorded_run(tmp_path, token="run-c")  # a fresh run starts the files anew
    assert len(events_path(tmp_path, 0).read_text().splitlines()) == 5


def test_the_log_is_buffered_and_appended_not_written_per_record(tmp_path) -> None:
    path = tmp_path / "events" / "rank-00000.jsonl"
    log = EventLog(path, fresh=True)
    log.add({"k": "start", "run": "r", "t": 1.0, "rank": 0})
    assert path.read_text() == ""  # nothing yet: appended every FLUSH_SECONDS
    assert not log.due(time.monotonic()) and log.due(time.monotonic() + 60)
    log.close()
    assert path.read_text().count("\n") == 1


def test_resource_samples_read_proc(tmp_path) -> None:
    cpu, rss = read_usage(os.getpid())
    assert cpu > 0 and 1 < rss < 1e6
    assert read_usage(2**22 + 12345) == (0.0, 0.0)  # gone: nothing, no error
    recorder = Recorder(tmp_path, 0, "r", 1, True, 0.01, lambda: [os.getpid()])
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # busy: this process's CPU
        recorder.tick()
    recorder.close()
    events = read_events(tmp_path)
    assert events is not None and events.samples
    sample = events.samples[-1]
    assert sample["n"] == 1 and sample["rss"] > 1 and sample["srss"] > 1
    assert max(s["cpu"] for s in events.samples) > 20  # it spun


def test_no_samples_when_monitoring_is_off(tmp_path) -> None:
    recorder = Recorder(tmp_path, 0, "r", 1, True, 0.0, lambda: [os.getpid()])
    recorder.next_check = 0.0
    recorder.tick()
    recorder.close()
    events = read_events(tmp_path)
    assert events is not None and events.samples == []


def test_report_summary_matches_summary_json_and_the_events(tmp_path) -> None:
    recorded_run(tmp_path)
    summary = write_summary(tmp_path)
    report = build_report(tmp_path)
    assert (report["rows"], report["wall_seconds"], report["rows_per_second"]) == \
        (summary["rows_scored"], summary["wall_seconds"], summary["rows_per_second"])
    assert report["batches"] == 6 and report["tries"] == 9
    ranks = {r["rank"]: r for r in report["per_rank"]}
    assert (ranks[0]["rows"], ranks[1]["rows"]) == (30, 30)
    assert (ranks[0]["procs"], ranks[1]["procs"]) == (2, 1)
    assert ranks[0]["score_seconds"] == pytest.approx(0.009)  # three scored tries
    assert 0 < ranks[0]["busy_share"] < ranks[1]["busy_share"] <= 1
    assert [s["batch_id"] for s in report["stragglers"]] == [5]
    assert report["failures"] == {
        "failed_tries": 2, "batches": [2, 6], "given_up": [6], "returned_or_abandoned": 1,
        "tracebacks": str(tmp_path / "failed_batches.json")}
    text = describe_report(report)
    assert "60 rows in 1.2s (48 rows/s)" in text, text
    assert "batch 5 on rank 1 proc 0" in text
    assert f"tracebacks in {tmp_path / 'failed_batches.json'}" in text


def test_given_up_batches_are_failed_batches_json_s(tmp_path) -> None:
    """A batch whose retry was due when the job stopped failed, but was not given up."""
    recorded_run(tmp_path)
    write_summary(tmp_path, status="failed")
    (tmp_path / "failed_batches.json").write_text(json.dumps({"failed": [
        {"batch_id": 2, "attempts": [{"error": "x"}]}, {"batch_id": 4, "items_failed": 1,
                                                        "attempts": []}]}))
    failures = build_report(tmp_path)["failures"]
    assert failures["batches"] == [2, 6] and failures["given_up"] == [2]


def test_a_running_job_is_reported_from_its_events(tmp_path) -> None:
    recorded_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running"}))
    report = build_report(tmp_path)
    assert report["status"] == "running" and report["rows"] == 60


def test_not_a_run_directory_or_a_run_that_never_started(tmp_path) -> None:
    with pytest.raises(InputError, match="not a run directory"):
        build_report(tmp_path / "missing")
    with pytest.raises(InputError, match="not a run directory"):
        build_report(tmp_path)
    (tmp_path / "plan.json").write_text("{}")
    write_summary(tmp_path, status="failed")
    with pytest.raises(InputError, match="never started scoring"):
        build_report(tmp_path)
    Recorder(tmp_path, 0, "r", 1, True, 0.0, lambda: []).close()  # started, no batch
    with pytest.raises(InputError, match="never started scoring"):
        build_report(tmp_path)
    write_summary(tmp_path, status="died")  # killed before its records were written
    with pytest.raises(InputError, match=r"summary\.json says died: it was killed before"):
        build_report(tmp_path)


def test_pictures_are_written(tmp_path) -> None:
    from matplotlib.image import imread

    recorded_run(tmp_path)
    write_summary(tmp_path)
    paths = draw(tmp_path, tmp_path / "pictures")
    assert [p.name for p in paths] == ["timeline.png", "throughput.png"]
    for path in paths:
        height, width, _ = imread(path).shape
        assert width >= 1000 and height >= 250


def test_without_matplotlib_one_line_says_what_to_install(tmp_path, monkeypatch) -> None:
    recorded_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'mpiscore\[report\]'"):
        draw(tmp_path, tmp_path)
