"""Run a merge plan: one output tensor at a time, a chunk of elements at a time: each input's
chunk read, merged on the job's device in float32 and written in the output dtype at once; then
config, tokenizer, the config used and `merge_report.json` beside the weights. All of it goes
to `OUT.part`, renamed when done."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.core.convert.writing import disk_error
from app.core.cuda import torch_device
from app.core.errors import BadInputError, JobError
from app.core.formats.file_stamp import check_unchanged
from app.core.formats.model_info import format_bytes
from app.core.jobs import Reporter, atomic_output, check_cancel
from app.core.merge.canonical import Layout, with_layer
from app.core.merge.chunked import chunks, merge_into
from app.core.merge.job import check_resources
from app.core.merge.plan import InputRef, MergePlan, TensorAction
from app.core.merge.sources import ModelSource, StoredSlices
from app.core.merge.writer import ShardWriter, encoded_view

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja")
CONFIG_NAME = "mergekit_config.yml"
REPORT_NAME = "merge_report.json"


@dataclass(frozen=True)
class MergeResult:
    output: Path
    bytes_written: int
    tensors_written: int
    seconds: float
    counts: dict[str, int]
    gguf: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "bytes_written": self.bytes_written,
                "tensors_written": self.tensors_written, "seconds": round(self.seconds, 3),
                "counts": self.counts, "gguf": str(self.gguf) if self.gguf else None}


def assemble(source: ModelSource, layout: Layout, layer: int | None,
             device: torch.device) -> torch.Tensor:
    """The input's tensor in the output's layout (on `device`, in the dtype it is stored in),
    from whichever of its own tensors hold each unit; each is read once."""
    keys = [[with_layer(u.key, layer) if layer is not None else u.key for u in row]
            for row in layout.units]
    owners = {source.units[k][0] for row in keys for k in row}
    if len(owners) == 1:
        name = next(iter(owners))
        if source.layout(name).keys() == [k for row in keys for k in row]:
            return source.read(name, device, float32=False)
    cache: dict[str, torch.Tensor] = {}

    def unit(key: str) -> torch.Tensor:
        name, own = source.units[key]
        if name not in cache:
            cache[name] = source.read(name, device, float32=False)
        value = cache[name]
        if own.expert is not None:
            value = value[own.expert]
        if own.rows is not None:
            value = value[own.rows[0]:own.rows[1]]
        return value

    if not layout.fused:
        return unit(keys[0][0]).contiguous()
    return torch.stack([torch.cat([unit(k) for k in row], dim=0) for row in keys])


def flat_input(plan: MergePlan, ref: InputRef, layout: Layout,
               device: torch.device) -> torch.Tensor | StoredSlices:
    """One input of an output tensor in flat element order: read a slice at a time from its
    file when it is stored exactly so, otherwise assembled whole."""
    source = plan.models[ref.model]
    name = source.stored_as(layout, ref.layer)
    if name is not None and source.streams(name):
        return source.slices(name, device)
    return assemble(source, layout, ref.layer, device).reshape(-1)


class ChunkSink:
    """The flat output of `chunked.merge_into`: each chunk, assigned in order, is written to the
    shard in the output dtype at once, so no whole output tensor is ever held."""

    def __init__(self, writer: ShardWriter, action: TensorAction, device: torch.device) -> None:
        self.writer = writer
        self.action = action
        self.device = device
        self.count = action.n_elements
        self.next = 0

    def numel(self) -> int:
        return self.count

    def __setitem__(self, index: slice, value: torch.Tensor) -> None:
        start, stop, _ = index.indices(self.count)
        if start != self.next or value.numel() != stop - start:
            raise JobError(f"chunk [{start}, {stop}) of {self.action.name} out of order",
                           path=self.writer.folder)
        self.writer.append(encoded_view(value, self.action.dtype))
        self.next = stop


def write_tensor(plan: MergePlan, action: TensorAction, device: torch.device,
                 writer: ShardWriter) -> None:
    """Compute one output tensor chunk by chunk (inputs as stored, arithmetic in float32) and
    write it; bytes that nothing would change are copied through unchanged."""
    writer.begin(action)
    if action.action == "copied" and len(action.inputs) == 1 and not plan.in_union(action):
        ref = action.inputs[0]
        source = plan.models[ref.model]
        stored = source.tensors.get(ref.name)
        if stored is not None and stored.dtype == action.dtype and source.streams(ref.name) \
                and stored.shape == action.shape \
                and source.stored_as(action.layout, ref.layer) == ref.name:
            data = source.slices(ref.name, torch.device("cpu"))
            for start, end in chunks(action.n_elements):
                writer.append(memoryview(data[start:end].view(torch.uint8).numpy()))
            writer.end()
            return
    inputs: list[torch.Tensor | StoredSlices]
    if plan.in_union(action):
        whole = [assemble(plan.models[ref.model], action.layout, ref.layer, device).float()
                 for ref in action.inputs]
        inputs = [t.reshape(-1) for t in plan.vocab.permuted(
            [ref.model for ref in action.inputs], whole)]
    else:
        inputs = [flat_input(plan, ref, action.layout, device) for ref in action.inputs]
    method = "passthrough" if action.action == "copied" else plan.config.merge_method
    merge_into(method, inputs, action.params, ChunkSink(writer, action, device))
    writer.end()


def _write_side_files(plan: MergePlan, folder: Path, reporter: Reporter) -> None:
    (folder / "config.json").write_text(json.dumps(plan.hf_config, indent=2) + "\n")
    base = plan.models[plan.base].path
    generation = base / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, folder / generation.name)
    elif base.is_file():  # a GGUF: the generation defaults its config implies
        import transformers

        config = transformers.AutoConfig.for_model(**plan.hf_config)
        transformers.GenerationConfig.from_model_config(config).save_pretrained(folder)
    tokenizer = plan.models[plan.tokenizer_from].path
    if plan.vocab is not None:
        for name, data in plan.vocab.tokenizer_files.items():
            _check_tokenizer_name(name, plan.target)
            (folder / name).write_bytes(data)
        copied = sorted(plan.vocab.tokenizer_files)
    elif tokenizer.is_file():
        _gguf_tokenizer(tokenizer, folder, reporter)
        copied = ["tokenizer.json"] if (folder / "tokenizer.json").is_file() else []
    else:
        copied = [name for name in TOKENIZER_FILES if (tokenizer / name).is_file()]
        for name in copied:
            shutil.copyfile(tokenizer / name, folder / name)
    if not copied:
        reporter.log("warning", f"{tokenizer} has no tokenizer files; the merged model has "
                                "none")
    (folder / CONFIG_NAME).write_text(plan.config.text if plan.config.text.endswith("\n")
                                      else plan.config.text + "\n")
    (folder / REPORT_NAME).write_text(json.dumps(plan.to_json(), indent=2) + "\n")


def _check_tokenizer_name(name: str, target: Path) -> None:
    # The plan may come from another process: a name that is not a plain file name, or that
    # is one of the merge's own files, would write outside the output or over its config.
    own = {"config.json", "generation_config.json", CONFIG_NAME, REPORT_NAME}
    if Path(name).name != name or name in ("", ".", "..") or name in own or \
            name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
        raise BadInputError(f"the merge plan names a tokenizer file {name!r}, which is not a "
                            "tokenizer file name", path=target,
                            hint="plan the merge again")


def _gguf_tokenizer(gguf_path: Path, folder: Path, reporter: Reporter) -> None:
    """The GGUF's vocabulary as tokenizer.json (as a GGUF → HF conversion writes it), when it
    can be one."""
    from app.core.convert.hf_tokenizer import save_tokenizer
    from app.core.merge.gguf_source import tokenizer_problem

    problem = tokenizer_problem(gguf_path)
    if problem is not None:
        reporter.log("warning", f"{gguf_path}: {problem}")
        return
    for note in save_tokenizer(folder, gguf_path):
        reporter.log("info", note)


def log_plan(plan: MergePlan, reporter: Reporter) -> None:
    counts = plan.counts()
    reporter.log("info", f"{plan.config.merge_method} merge of "
                         f"{', '.join(m.label for m in plan.models)} into {plan.target}: "
                         f"{counts['merged']} tensors merged, {counts['copied']} copied, "
                         f"{counts['refused']} refused")
    for warning in plan.warnings:
        reporter.log("warning", warning)
    for action in plan.actions:
        models = ", ".join(plan.model_label(i.model) for i in action.inputs)
        why = f" ({action.reason})" if action.reason else ""
        # Merged tensors are the rule; what was copied or refused is worth a line on screen.
        level = {"merged": "debug", "copied": "info", "refused": "error"}[action.action]
        source = f" from {models}" if models else ""
        reporter.log(level, f"{action.action} {action.name}{source}{why}")


def run_merge(plan: MergePlan, reporter: Reporter, *, check_memory: bool = True
              ) -> MergeResult:
    """Write the planned merge atomically; the plan must have no refusals (`check_plan`)."""
    from app.core.merge.planner import check_plan

    start = time.monotonic()
    check_plan(plan)
    check_unchanged(plan.input_stamps)
    if check_memory:
        check_resources(plan)
    log_plan(plan, reporter)
    device = torch_device(plan.device)
    actions = plan.written
    total = sum(a.n_bytes for a in actions)
    done = 0
    check_cancel(reporter)
    # Merges run on torch's own threads (unlike conversions' single-threaded workers): on an
    # idle 2-core machine they made a 1 B-sized DARE-TIES 1.4x faster than one thread (21.2 ->
    # 15.1 s wall, merge_bench --size layers2).
    with atomic_output(plan.target, overwrite=plan.overwrite) as part:
        part.mkdir()
        writer = ShardWriter(part, actions, plan.shard_bytes)
        try:
            for action in actions:
                check_cancel(reporter)
                write_tensor(plan, action, device, writer)
                done += action.n_bytes
                reporter.progress(done, total, action.name)
        finally:
            writer.close()
        writer.finish()
        try:
            _write_side_files(plan, part, reporter)
        except OSError as exc:
            raise disk_error(exc, plan.target) from None
        check_cancel(reporter)
    reporter.log("info", f"wrote {plan.target} ({format_bytes(done)} of tensors in "
                         f"{len(writer.names)} shard(s))")
    gguf = None
    if plan.gguf_type:
        gguf = _convert_to_gguf(plan, reporter)
    return MergeResult(plan.target, done, len(actions), time.monotonic() - start, plan.counts(),
                       gguf)


def _convert_to_gguf(plan: MergePlan, reporter: Reporter) -> Path:
    from app.core.convert import execute_plan, plan_conversion

    assert plan.gguf_type is not None
    target = plan.target.parent / f"{plan.target.name}-{plan.gguf_type.upper()}.gguf"
    reporter.log("info", f"converting the merged model to GGUF {plan.gguf_type}")
    conversion = plan_conversion(plan.target, target, out_type=plan.gguf_type,
                                 device=plan.device, overwrite=plan.overwrite)
    execute_plan(conversion, reporter)
    return target
