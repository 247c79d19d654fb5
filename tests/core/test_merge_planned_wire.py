"""A merge planned in the window crosses to the job's process whole and runs there as it was
checked, without planning again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

import factories
from app.core.jobs import RecordingReporter
from app.core.jobs_process import run_in_child
from app.core.jobs_wire import decode, dumps, encode, loads
from app.core.merge import MergeRequest


def ties_yaml(base: Path, other: Path, extra: str = "") -> str:
    return (f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {base}\n"
            f"  - model: {other}\n    parameters:\n      weight: 0.7\n      density: 0.5\n"
            f"{extra}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("planned-merge")
    return (factories.make_hf_model(root / "a", "llama", seed=1),
            factories.make_hf_model(root / "b", "llama", seed=2))


@pytest.mark.parametrize("inputs", ["hf", "union", "gguf", "lora"])
def test_every_kind_of_merge_plan_crosses_as_json(inputs: str, models: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    a, b = models
    if inputs == "union":
        config = ties_yaml(a, b, "tokenizer_source: union\n")
    elif inputs == "gguf":
        config = ties_yaml(a, factories.make_gguf_from_hf(b, tmp_path / "b.gguf", "Q8_0"))
    elif inputs == "lora":
        from test_merge_lora import make_adapter

        make_adapter(a, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
        config = f"merge_method: passthrough\nmodels:\n  - model: {a}+{tmp_path / 'adapter'}\n"
    else:
        config = ties_yaml(a, b)
    plan = MergeRequest(tmp_path / "out", config_text=config).plan()
    back = decode(loads(dumps({"event": "x", "plan": encode(plan)}))["plan"])
    assert back == plan
    if inputs == "union":
        assert back.vocab.tokenizer_files["tokenizer.json"] == plan.vocab.tokenizer_files[
            "tokenizer.json"]


def test_the_job_runs_the_checked_plan_without_planning_again(models: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    a, b = models
    config = tmp_path / "merge.yaml"
    config.write_text(ties_yaml(a, b))
    request = MergeRequest(tmp_path / "merged", config, device="cpu")
    plan = request.plan()
    # The configuration changes after the plan was checked: planning it again would fail, but
    # the job runs the plan it was given.
    config.write_text("merge_method: no-such-method\n")
    reporter = RecordingReporter()
    result = run_in_child(replace(request, program=plan), reporter)
    assert result.status == "done", result.error
    assert not any(text.startswith("planning") for _level, text in reporter.lines)
    assert load_file(tmp_path / "merged" / "model.safetensors").keys() == {
        a.name for a in plan.written}

    again = run_in_child(replace(request, target=tmp_path / "again"), RecordingReporter())
    assert again.status == "failed" and "no-such-method" in (again.error or "")
    assert not (tmp_path / "again").exists()
