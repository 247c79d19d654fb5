"""The convert job: checks disk and memory against the plan, streams it into `NAME.part`, and
renames it when complete. A failed or cancelled job leaves nothing; inputs are only read."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from app.core.convert.metadata import MetaEntry, read_gguf_entries, replace_entry
from app.core.convert.plan import ConversionPlan, OutputFormat
from app.core.convert.planner import plan_conversion
from app.core.errors import OptionError
from app.core.formats.file_stamp import check_unchanged
from app.core.formats.model_info import format_bytes
from app.core.jobs import ProgressUnit, Reporter, atomic_output, check_cancel
from app.core.quant.overrides import TypeOverrides
from app.core.resource_checks import require_disk, require_memory


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    bytes_written: int
    tensors_written: int
    seconds: float
    fallbacks: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"output": str(self.output), "bytes_written": self.bytes_written,
                "tensors_written": self.tensors_written, "seconds": round(self.seconds, 3),
                "fallbacks": list(self.fallbacks), "warnings": list(self.warnings)}


def check_resources(plan: ConversionPlan, *, memory: bool = True) -> None:
    """Refuse to start when the output cannot fit on its disk or (unless the user chose to try
    anyway) the job in memory."""
    check_disk(plan)
    if memory:
        check_memory(plan)


def check_disk(plan: ConversionPlan) -> None:
    require_disk(plan.target.parent, plan.output_bytes)


def check_memory(plan: ConversionPlan) -> None:
    require_memory(plan.device, plan.estimated_peak_ram_bytes, plan.estimated_peak_vram_bytes)


def _gguf_entries(plan: ConversionPlan) -> tuple[MetaEntry, ...]:
    if plan.copy_metadata_from is None:
        return plan.metadata
    entries = read_gguf_entries(plan.copy_metadata_from)
    for override in plan.metadata:
        entries = replace_entry(entries, override)
    return entries


def execute_plan(plan: ConversionPlan, reporter: Reporter,
                 check_memory: bool = True) -> ConvertResult:
    """Check that the inputs are as planned and the resources suffice, then write the plan's
    output atomically."""
    # torch comes in with the writers: planning and checking stay light for the window.
    from app.core.convert.execute import describe, run_plan
    from app.core.convert.writing import GGUFSink, SafetensorsSink, disk_error

    start = time.monotonic()
    check_unchanged(plan.input_stamps)
    check_resources(plan, memory=check_memory)
    if not check_memory:
        reporter.log("warning", "memory check skipped at the user's request")
    for note in plan.notes:
        reporter.log("info", note)
    for warning in plan.warnings:
        reporter.log("warning", warning)
    for fallback in plan.fallbacks:
        reporter.log("warning", f"fallback: {fallback}")
    for line in describe(plan):
        reporter.log("debug", line)
    reporter.log("info", f"writing {len(plan.tensors)} tensors, {format_bytes(plan.output_bytes)}"
                         f" to {plan.target} on {plan.device}")
    check_cancel(reporter)
    with atomic_output(plan.target, overwrite=plan.overwrite) as part:
        if plan.to == "gguf":
            entries = _gguf_entries(plan)
            check_cancel(reporter)
            with GGUFSink(part, plan.architecture, entries, plan.tensors) as sink:
                written = run_plan(plan, sink, reporter)
        else:
            part.mkdir()
            with SafetensorsSink(part, plan.tensors) as sink:
                written = run_plan(plan, sink, reporter)
            try:
                _write_hf_files(plan, part, reporter)
            except OSError as exc:
                raise disk_error(exc, plan.target) from None
        check_cancel(reporter)
    seconds = time.monotonic() - start
    reporter.log("info", f"wrote {plan.target} ({format_bytes(written)} of tensors in "
                         f"{seconds:.1f} s)")
    return ConvertResult(plan.target, written, len(plan.tensors), seconds, plan.fallbacks,
                         plan.warnings)


def _write_hf_files(plan: ConversionPlan, folder: Path, reporter: Reporter) -> None:
    output = plan.hf_output
    assert output is not None, "an HF plan says what goes beside the weights"
    if output.through_transformers:
        import transformers

        config = transformers.AutoConfig.for_model(**output.config)
        config.save_pretrained(folder)
        generation = transformers.GenerationConfig.from_model_config(config)
        generation.save_pretrained(folder)
    else:
        (folder / "config.json").write_text(json.dumps(output.config, indent=2,
                                                       sort_keys=True) + "\n")
    for source in output.copied_files:
        shutil.copyfile(source, folder / source.name)
    if output.tokenizer_from_gguf is not None:
        from app.core.convert.hf_tokenizer import save_tokenizer

        for note in save_tokenizer(folder, output.tokenizer_from_gguf):
            reporter.log("info", note)
    reporter.log("info", f"wrote {', '.join(sorted(p.name for p in folder.iterdir()))}")


@dataclass(frozen=True)
class ConvertRequest:
    """Job: convert a model (HF folder or GGUF) to a GGUF of `out_type`, or to HF safetensors."""

    source: Path
    target: Path | None = None
    out_type: str = "F16"
    to: OutputFormat = "gguf"
    device: str = "auto"
    keep_type: str | None = None
    overwrite: bool = False
    require_tokenizer: bool = False
    pure: bool = False  # every weight the target's one type, not llama-quantize's mix
    type_overrides: TypeOverrides | None = None  # --tensor-type and the output/embedding types
    imatrix: Path | None = None  # importance matrix weighting the quantizers
    target_size: int | None = None  # bytes: a type per weight chosen to fit (--target-size)
    fit_gpu_vram: int | None = None  # bytes of VRAM the whole model must fit (--fit-gpu)
    fit_gpu_context: int = 4096  # tokens of context it must fit with
    check_memory: bool = True  # False: the user chose to try although the estimate says no
    progress_unit: ProgressUnit = "bytes"
    # Loads torch or a native runtime and a whole model: a crash must not take the caller.
    runs_in_child_process: ClassVar[bool] = True
    # The program already planned and checked for this request (the GUI's sheet): the job runs
    # it as it is instead of planning again.
    program: ConversionPlan | None = field(default=None, compare=False, repr=False)

    @property
    def title(self) -> str:
        what = "HF safetensors" if self.to == "hf" else f"GGUF {self.out_type.upper()}"
        return f"Convert {Path(self.source).name} to {what}"

    def plan(self) -> ConversionPlan:
        return plan_conversion(self.source, self.target, out_type=self.out_type, to=self.to,
                               device=self.device, keep_type=self.keep_type,
                               overwrite=self.overwrite,
                               require_tokenizer=self.require_tokenizer, pure=self.pure,
                               type_overrides=self.type_overrides, imatrix=self.imatrix)

    def fit_to_size(self, plan: ConversionPlan, reporter: Reporter) -> ConversionPlan:
        """With `target_size` or `fit_gpu_vram`, the plan's weights retyped to fit (measures
        the tensors)."""
        from app.core.convert.size_target import apply_size_target, gpu_weight_budget

        if self.target_size is not None and self.fit_gpu_vram is not None:
            raise OptionError("give a size target or fit a GPU, not both")
        if self.target_size is not None:
            return apply_size_target(plan, self.target_size, reporter)
        if self.fit_gpu_vram is not None:
            budget, on_gpu = gpu_weight_budget(plan, self.fit_gpu_vram, self.fit_gpu_context)
            return apply_size_target(plan, budget, reporter, counted=on_gpu)
        return plan

    def run(self, reporter: Reporter) -> ConvertResult:
        plan = self.program
        if plan is None:
            reporter.log("info", f"planning {self.title.lower()}")
            plan = self.fit_to_size(self.plan(), reporter)
        return execute_plan(plan, reporter, self.check_memory)
