"""Journal and resume checks, and the fault-injection plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpiscore.errors import ConfigError
from mpiscore.faults import FaultPlan, InjectedFault
from mpiscore.journal import FINGERPRINT, check_resumable, fingerprint, stamped
from mpiscore.plan import SourceFile
from mpiscore.report import write_json


def stamp(path: Path, model: str = "abc", batch_rows: int = 10,
          model_data: dict[str, str] | None = None) -> dict:
    return fingerprint(model, stamped([SourceFile(str(path), 10)]), [[0, 0, 0, 10]],
                       batch_rows, "o.h5", "hdf5", [("y", "<f4", (2,))], model_data)


def test_resume_checks_say_what_changed(tmp_path: Path) -> None:
    data = tmp_path / "x.h5"
    data.write_text("v1")
    with pytest.raises(ConfigError, match="nothing to resume"):
        check_resumable(tmp_path, stamp(data))
    write_json(tmp_path / FINGERPRINT, stamp(data))
    check_resumable(tmp_path, stamp(data))
    with pytest.raises(ConfigError, match="the model changed"):
        check_resumable(tmp_path, stamp(data, model="def"))
    with pytest.raises(ConfigError, match="the mini-batch size changed: 10 rows per batch "
                       "then, 20 now"):
        check_resumable(tmp_path, stamp(data, batch_rows=20))
    data.write_text("version two")
    with pytest.raises(ConfigError, match=f"input {data} changed: 2 bytes then, 11 now"):
        check_resumable(tmp_path, stamp(data))


def test_resume_refused_when_a_linked_input_leads_elsewhere(tmp_path: Path) -> None:
    """A symlink pointed at another file of the same size and time (touch -r)."""
    import os

    first, second, link = tmp_path / "a.h5", tmp_path / "c.h5", tmp_path / "in.h5"
    first.write_text("same size 1")
    second.write_text("same size 2")
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    link.symlink_to(first)
    write_json(tmp_path / FINGERPRINT, stamp(link))
    check_resumable(tmp_path, stamp(link))
    link.unlink()
    link.symlink_to(second)
    with pytest.raises(ConfigError, match=f"input {link} changed: it led to {first} then, "
                       f"{second} now"):
        check_resumable(tmp_path, stamp(link))
    assert "target" not in stamp(first)["inputs"][0]  # no link: the stamp is as before
    before_targets = stamp(link)
    for entry in before_targets["inputs"]:
        del entry["target"]  # a run directory of a version that recorded none
    write_json(tmp_path / FINGERPRINT, before_targets)
    check_resumable(tmp_path, stamp(link))  # still resumes


def test_resume_refused_when_the_model_s_external_data_changed(tmp_path: Path) -> None:
    data = tmp_path / "x.h5"
    data.write_text("v1")
    assert "model_data" not in stamp(data)  # a model without any: the fingerprint as before
    weights = {"w.bin": "a" * 64, "z.bin": "c" * 64}
    write_json(tmp_path / FINGERPRINT, stamp(data, model_data=weights))
    check_resumable(tmp_path, stamp(data, model_data=dict(reversed(weights.items()))))
    with pytest.raises(ConfigError, match=r"since the interrupted run, the model changed: its "
                       r"external data w\.bin, SHA-256 aaaaaaaaaaaa\.\.\. then, "
                       r"SHA-256 bbbbbbbbbbbb\.\.\. now; to start over"):
        check_resumable(tmp_path, stamp(data, model_data={**weights, "w.bin": "b" * 64}))
    with pytest.raises(ConfigError, match=r"its external data z\.bin, SHA-256 cccccccccccc"
                       r"\.\.\. then, none now"):
        check_resumable(tmp_path, stamp(data, model_data={"w.bin": "a" * 64}))
    write_json(tmp_path / FINGERPRINT, stamp(data))  # run from the model's folder, before
    with pytest.raises(ConfigError, match=r"its external data w\.bin, none then, SHA-256 aaaa"):
        check_resumable(tmp_path, stamp(data, model_data=weights))


def test_fault_plan() -> None:
    plan = FaultPlan.parse("raise:3, raise-always:5")
    plan.before_batch(4, 0)
    with pytest.raises(InjectedFault):
        plan.before_batch(3, 0)
    plan.before_batch(3, 1)  # retried: succeeds
    with pytest.raises(InjectedFault):
        plan.before_batch(5, 2)
    FaultPlan.parse("kill-rank:1").before_batch(1, 0)  # a rank's fault, not batch 1's
    assert FaultPlan.parse("") == FaultPlan()
    with pytest.raises(ConfigError, match="MPISCORE_FAULTS"):
        FaultPlan.parse("explode:1")
