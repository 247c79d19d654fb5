"""A plan remembers the files it read: a job refuses a plan whose inputs were truncated, grew,
were rewritten, replaced or deleted after it was checked, names the file, and writes nothing;
a plan whose inputs are as they were runs (reading them changes none of their stamps)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import factories
from app.core.convert import ConvertRequest, execute_plan, plan_conversion
from app.core.convert.relayout import PlannedRelayout, RelayoutRequest, execute_relayout
from app.core.errors import BadInputError
from app.core.formats.file_stamp import FileStamp, check_unchanged, stamp_files
from app.core.jobs import RecordingReporter, part_path
from app.core.jobs_process import run_in_child
from app.core.jobs_wire import decode, dumps, encode, loads
from app.core.merge import MergeRequest

EXTRA = 64  # bytes cut off or appended


def truncate(path: Path) -> str:
    size = path.stat().st_size
    os.truncate(path, size - EXTRA)
    return f"size {size} → {size - EXTRA} bytes"


def append(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b"\0" * EXTRA)
    return f"size {size} → {size + EXTRA} bytes"


def replace_same_size(path: Path) -> str:
    """Another file of the same size and modification time takes the name (os.replace): only
    its identity tells it apart."""
    data = bytearray(path.read_bytes())
    data[-EXTRA:] = bytes(b ^ 0xFF for b in data[-EXTRA:])
    other = path.with_name(path.name + ".new")
    other.write_bytes(bytes(data))
    before = path.stat()
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)
    return "was replaced by another file"


def rewrite_in_place(path: Path) -> str:
    """The same file rewritten, same size: a later modification time is all that shows."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(-EXTRA, os.SEEK_END)
        handle.write(b"\xff" * EXTRA)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    return "it was rewritten (same size, new modification time)"


def delete(path: Path) -> str:
    path.unlink()
    return "no longer exists"


CHANGES: dict[str, Callable[[Path], str]] = {
    "truncated": truncate, "appended": append, "replaced": replace_same_size,
    "rewritten": rewrite_in_place, "deleted": delete}


@dataclass(frozen=True)
class Case:
    """A planned job, the input file to change, and how to run the plan."""

    plan: Any
    changed: Path
    run: Callable[[], Any]
    request: Any  # the planned job, for the child-process path
    output: Path


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return factories.make_hf_model(tmp_path_factory.mktemp("stamps") / "tiny-llama", "llama")


def convert_hf(hf_model: Path, root: Path) -> Case:
    source = shutil.copytree(hf_model, root / "source")
    target = root / "out.gguf"
    plan = plan_conversion(source, target, out_type="Q8_0", device="cpu")
    return Case(plan, source / "model.safetensors",
                lambda: execute_plan(plan, RecordingReporter()),
                ConvertRequest(source, target, "Q8_0", device="cpu", program=plan), target)


def convert_gguf(_hf_model: Path, root: Path) -> Case:
    source = factories.make_gguf(root / "source.gguf")
    target = root / "out.gguf"
    plan = plan_conversion(source, target, out_type="Q8_0", device="cpu")
    return Case(plan, source, lambda: execute_plan(plan, RecordingReporter()),
                ConvertRequest(source, target, "Q8_0", device="cpu", program=plan), target)


def relayout(_hf_model: Path, root: Path) -> Case:
    source = factories.make_gguf(root / "moe.gguf", n_experts=4)
    request = RelayoutRequest(source, root / "out.gguf", "split")
    planned = request.plan()
    return Case(planned, source, lambda: execute_relayout(planned, RecordingReporter()),
                PlannedRelayout.of(request, planned), root / "out.gguf")


def merge(hf_model: Path, root: Path) -> Case:
    a = shutil.copytree(hf_model, root / "a")
    b = factories.make_hf_model(root / "b", "llama", seed=2)
    config = (f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters:\n"
              f"      weight: 0.5\n  - model: {b}\n    parameters:\n      weight: 0.5\n")
    request = MergeRequest(root / "merged", config_text=config, device="cpu")
    plan = request.plan()
    request = replace(request, program=plan)
    return Case(plan, b / "model.safetensors", lambda: request.run(RecordingReporter()),
                request, root / "merged")


JOBS = {"convert-hf": convert_hf, "convert-gguf": convert_gguf, "relayout": relayout,
        "merge": merge}


def assert_nothing_written(case: Case) -> None:
    assert not case.output.exists()
    assert not part_path(case.output).exists()
    assert not list(case.output.parent.glob("*.part"))


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("job", JOBS)
def test_a_changed_input_stops_the_job_before_it_writes(job: str, change: str,
                                                        hf_model: Path, tmp_path: Path) -> None:
    case = JOBS[job](hf_model, tmp_path)
    what = CHANGES[change](case.changed)
    with pytest.raises(BadInputError) as caught:
        case.run()
    assert caught.value.path == case.changed
    assert case.changed.name in str(caught.value) and what in str(caught.value)
    assert "nothing was written" in str(caught.value)
    assert caught.value.exit_code == 2
    assert_nothing_written(case)


@pytest.mark.parametrize("job", JOBS)
def test_an_unchanged_plan_runs_and_reading_leaves_every_stamp_as_it_was(
        job: str, hf_model: Path, tmp_path: Path) -> None:
    case = JOBS[job](hf_model, tmp_path)
    plans = case.plan.plans if job == "relayout" else (case.plan,)
    stamps = tuple(s for p in plans for s in p.input_stamps)
    assert case.changed in {s.path for s in stamps}
    case.run()
    assert case.output.exists()
    assert stamp_files(s.path for s in stamps) == tuple(dict.fromkeys(stamps))


@pytest.mark.parametrize("job", ["convert-gguf", "relayout", "merge"])
def test_the_stamps_cross_to_the_job_process_and_are_checked_there(
        job: str, hf_model: Path, tmp_path: Path) -> None:
    case = JOBS[job](hf_model, tmp_path)
    back = decode(loads(dumps({"event": "x", "request": encode(case.request)}))["request"])
    assert back == case.request
    sent = back.planned.plan if job == "relayout" else back.program
    assert sent.input_stamps and all(isinstance(s, FileStamp) for s in sent.input_stamps)
    append(case.changed)
    result = run_in_child(case.request, RecordingReporter())
    assert result.status == "failed" and result.exit_code == 2, result.error
    assert f"{case.changed}: changed since the plan was checked" in (result.error or "")
    assert_nothing_written(case)


def test_an_unchanged_plan_runs_in_the_job_process(tmp_path: Path) -> None:
    case = convert_gguf(tmp_path, tmp_path)
    result = run_in_child(case.request, RecordingReporter())
    assert result.status == "done", result.error
    assert case.output.is_file()


def test_an_hf_cache_snapshot_stamps_its_blob(tmp_path: Path, hf_model: Path) -> None:
    """A snapshot's file is a symlink to a blob (here also hard-linked elsewhere): every name
    stamps the one file, so planning from the snapshot and running raises no false alarm, and
    a blob replaced under the link is seen."""
    files = {p.name: p.read_bytes() for p in hf_model.iterdir() if p.is_file()}
    snapshot = factories.make_hf_cache(tmp_path / "hub", "org/tiny", files)
    link = snapshot / "model.safetensors"
    blob = link.resolve()
    os.link(blob, tmp_path / "hard-linked.safetensors")
    stamp = FileStamp.of(link)
    assert (stamp.size, stamp.inode) == (blob.stat().st_size, blob.stat().st_ino)
    assert replace(FileStamp.of(tmp_path / "hard-linked.safetensors"), path=link) == stamp
    plan = plan_conversion(snapshot, tmp_path / "out.gguf", out_type="F16", device="cpu")
    assert link in {s.path for s in plan.input_stamps}
    execute_plan(plan, RecordingReporter())
    check_unchanged(plan.input_stamps)
    replace_same_size(blob)
    with pytest.raises(BadInputError, match="was replaced"):
        check_unchanged(plan.input_stamps)
