"""MoE expert layout in GGUF, changed losslessly by moving quantized bytes.

Stacked: one tensor per weight and layer, `blk.N.ffn_gate_exps.weight` with ne [n_embd, n_ff,
n_expert] (what current llama.cpp loads). Split: one tensor per expert, `blk.N.ffn_gate.E.weight`
with ne [n_embd, n_ff] (what older tools and other runtimes load). Expert E of a stacked tensor
is the E-th contiguous slice of its data whatever the type, so either direction is a plan of
byte copies run by `execute_plan`: one chunk in memory at a time, nothing dequantized.

Only when the experts of one weight have different types (hand-made files) can their bytes not
be stacked as they are: those experts are first requantized to the most common type into a
temporary file beside the output, and the stacked tensor takes its slices from there.

Split GGUF shards are read as one model; the output is one file, shards of a maximum size, or
as many shards as the input (see gguf_shards.py).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

from app.core.convert.gguf_shards import TENSOR_INFO_BYTES, assign_by_size, shard_plans
from app.core.convert.job import ConvertResult, check_disk, execute_plan
from app.core.convert.plan import ConversionPlan, SourceSlice, TensorPlan
from app.core.convert.planner import resolve_target
from app.core.convert.sizing import element_bytes
from app.core.errors import BadInputError, FormatError, OptionError, OptionFact, UnsupportedError
from app.core.formats.file_stamp import check_unchanged, stamp_files
from app.core.formats.gguf_header import GGUFHeader, GGUFTensorEntry, read_gguf_header
from app.core.formats.gguf_model import (
    GGUF_EXPERT_LAYOUTS,
    expert_layout,
    split_shard_info,
)
from app.core.formats.model_info import ModelInfo, format_bytes
from app.core.formats.scan import inspect_path
from app.core.jobs import ProgressUnit, Reporter, part_path
from app.core.quant import can_quantize

# plan_gguf's helpers are imported where they are used: that module loads the codec (torch),
# and the window imports this one when it starts.
ExpertsLayout = Literal["stacked", "split"]
LAYOUTS: tuple[ExpertsLayout, ...] = ("stacked", "split")
# The expert weights GGUF has a per-expert name for (llama.cpp's LLM_TENSOR_FFN_*_EXP).
STACKED_NAME = re.compile(r"^blk\.(?P<layer>\d+)\.ffn_(?P<kind>gate|up|down)_exps\.weight$")
SPLIT_NAME = re.compile(
    r"^blk\.(?P<layer>\d+)\.ffn_(?P<kind>gate|up|down)\.(?P<expert>\d+)\.weight$")
ANY_STACKED = re.compile(r"^blk\.\d+\.ffn_[a-z_]+_exps\.[a-z]+$")


def split_name(layer: int, kind: str, expert: int) -> str:
    return f"blk.{layer}.ffn_{kind}.{expert}.weight"


def stacked_name(layer: int, kind: str) -> str:
    return f"blk.{layer}.ffn_{kind}_exps.weight"


def expert_count(header: GGUFHeader) -> int:
    count = header.arch_field("expert_count")
    if not isinstance(count, int) or count <= 0:
        raise FormatError(f"no valid {header.architecture}.expert_count in the metadata "
                          f"(found {count!r}): the number of experts is unknown",
                          path=header.path)
    return count


def default_relayout_path(model: ModelInfo, experts: ExpertsLayout) -> Path:
    """`Name-stacked-experts.gguf` beside the source (a split model's base name)."""
    info = split_shard_info(model.path)
    stem = info[0] if info else model.path.stem
    return model.path.parent / f"{stem}-{experts}-experts.gguf"


@dataclass(frozen=True)
class ExpertGroup:
    """The experts of one weight of one layer in a split file, in expert order."""

    layer: int
    kind: str
    entries: tuple[tuple[GGUFTensorEntry, Path], ...]

    @property
    def name(self) -> str:
        return stacked_name(self.layer, self.kind)

    @property
    def common_type(self) -> str:
        """The most common type; on a tie, the type of the lowest-numbered expert."""
        counts = Counter(e.type_name for e, _ in self.entries)
        top = max(counts.values())
        return next(e.type_name for e, _ in self.entries if counts[e.type_name] == top)

    def odd_experts(self) -> list[int]:
        common = self.common_type
        return [i for i, (e, _) in enumerate(self.entries) if e.type_name != common]


@dataclass(frozen=True)
class RelayoutPlan:
    """The byte-copy plan of each output file (one, or one per shard), and (only for experts of
    mixed types) the plan that requantizes the odd experts into a temporary file first."""

    plans: tuple[ConversionPlan, ...]
    experts: ExpertsLayout
    requantize: ConversionPlan | None = None

    @property
    def plan(self) -> ConversionPlan:
        """The first (or only) output file's plan: it holds the metadata."""
        return self.plans[0]

    @property
    def targets(self) -> tuple[Path, ...]:
        return tuple(p.target for p in self.plans)

    @property
    def n_tensors(self) -> int:
        return sum(len(p.tensors) for p in self.plans)

    @property
    def output_bytes(self) -> int:
        """Disk the job needs at its peak: every output file and the temporary one."""
        extra = self.requantize.output_bytes if self.requantize else 0
        return sum(p.output_bytes for p in self.plans) + extra

    def disk_check_plan(self) -> ConversionPlan:
        """The first plan sized as the whole job's disk need, for `check_disk`."""
        return replace(self.plan, metadata_bytes=self.plan.metadata_bytes
                       + self.output_bytes - self.plan.output_bytes)

    def to_json(self) -> dict[str, object]:
        return {"experts": self.experts, "outputs": [str(t) for t in self.targets],
                "output_bytes": self.output_bytes, "n_tensors": self.n_tensors,
                "requantized": ([t.name for t in self.requantize.tensors]
                                if self.requantize else []),
                "plans": [p.to_json() for p in self.plans]}


def _split_tensors(header: GGUFHeader, entry: GGUFTensorEntry, n_expert: int,
                   layer: int, kind: str) -> list[TensorPlan]:
    if len(entry.shape) != 3 or entry.shape[2] != n_expert:
        found = entry.shape[2] if len(entry.shape) == 3 else f"shape {list(entry.shape)}"
        raise FormatError(f"a stacked expert tensor must have ne [n_embd, n_ff, n_expert]; its "
                          f"expert dimension is {found}, {header.architecture}.expert_count is "
                          f"{n_expert}", path=header.path, tensor=entry.name)
    row_length, rows_per_expert = entry.shape[0], entry.shape[1]
    expert_bytes = entry.n_bytes // n_expert
    row_bytes = expert_bytes // rows_per_expert
    tensors = []
    for expert in range(n_expert):
        piece = SourceSlice(header.path, entry.name, entry.offset + expert * expert_bytes,
                            rows_per_expert, row_length, row_bytes, entry.type_name)
        tensors.append(TensorPlan(split_name(layer, kind, expert), entry.type_name,
                                  (rows_per_expert, row_length), expert_bytes, (piece,),
                                  copy=True, note=f"expert {expert} of {entry.name}"))
    return tensors


def _stack_group(group: ExpertGroup) -> TensorPlan:
    from app.core.convert.plan_gguf import gguf_slice

    first = group.entries[0][0]
    shapes = {e.shape for e, _ in group.entries}
    if len(shapes) > 1:
        odd = next(e for e, _ in group.entries if e.shape != first.shape)
        raise FormatError(f"experts of {group.name} differ in shape ({list(first.shape)} and "
                          f"{list(odd.shape)}); they cannot be stacked",
                          path=group.entries[0][1], tensor=odd.name)
    common = group.common_type
    pieces = [gguf_slice(e, path) for e, path in group.entries]
    size = next(e.n_bytes for e, _ in group.entries if e.type_name == common)
    n_expert = len(pieces)
    odd = group.odd_experts()
    note = f"{n_expert} experts stacked"
    if odd:
        note += f"; expert(s) {', '.join(map(str, odd))} requantized to {common}"
    return TensorPlan(group.name, common, (n_expert, *reversed(first.shape)), size * n_expert,
                      tuple(pieces), copy=True, note=note)


def _expert_groups(headers: list[GGUFHeader], n_expert: int) -> dict[tuple[int, str],
                                                                     ExpertGroup]:
    found: dict[tuple[int, str], dict[int, tuple[GGUFTensorEntry, Path]]] = {}
    for header in headers:
        for entry in header.tensors:
            match = SPLIT_NAME.match(entry.name)
            if not match:
                continue
            expert = int(match["expert"])
            if expert >= n_expert:
                raise FormatError(f"expert {expert} is beyond {header.architecture}."
                                  f"expert_count {n_expert}", path=header.path,
                                  tensor=entry.name)
            key = (int(match["layer"]), match["kind"])
            found.setdefault(key, {})[expert] = (entry, header.path)
    groups = {}
    for (layer, kind), members in found.items():
        missing = [e for e in range(n_expert) if e not in members]
        if missing:
            raise FormatError(
                f"{len(missing)} of {n_expert} experts are missing (the file has "
                f"{len(members)}); a stacked tensor needs every one",
                path=headers[0].path, tensor=split_name(layer, kind, missing[0]))
        groups[(layer, kind)] = ExpertGroup(layer, kind,
                                            tuple(members[e] for e in range(n_expert)))
    return groups


def _check_requantizable(group: ExpertGroup) -> None:
    common = group.common_type
    if not can_quantize(common):
        odd = group.entries[group.odd_experts()[0]][0]
        raise UnsupportedError(
            f"the experts of {group.name} have different types and the odd ones would have to "
            f"be requantized to {common}, which Modelyard cannot write", path=group.entries[0][1],
            tensor=odd.name)


def _plan_tensors(headers: list[GGUFHeader], experts: ExpertsLayout, n_expert: int
                  ) -> tuple[list[TensorPlan], list[ExpertGroup]]:
    """Output tensors in input order, an expert weight where its first tensor was."""
    from app.core.convert.plan_gguf import gguf_slice, torch_shape

    groups = _expert_groups(headers, n_expert) if experts == "stacked" else {}
    tensors: list[TensorPlan] = []
    mixed: list[ExpertGroup] = []
    for header in headers:
        for entry in header.tensors:
            stacked = STACKED_NAME.match(entry.name)
            split = SPLIT_NAME.match(entry.name)
            if experts == "split" and stacked:
                tensors.extend(_split_tensors(header, entry, n_expert,
                                              int(stacked["layer"]), stacked["kind"]))
            elif experts == "split" and ANY_STACKED.match(entry.name):
                raise UnsupportedError("GGUF has no per-expert tensor name for this stacked "
                                       "tensor, so it cannot be split", path=header.path,
                                       tensor=entry.name)
            elif experts == "stacked" and split:
                group = groups[(int(split["layer"]), split["kind"])]
                if int(split["expert"]) == 0:  # the other experts join this tensor
                    tensors.append(_stack_group(group))
                    if group.odd_experts():
                        _check_requantizable(group)
                        mixed.append(group)
            else:
                tensors.append(TensorPlan(entry.name, entry.type_name, torch_shape(entry),
                                          entry.n_bytes, (gguf_slice(entry, header.path),),
                                          copy=True))
    return tensors, mixed


def _requantize_plan(model: ModelInfo, main: GGUFHeader, target: Path,
                     groups: list[ExpertGroup]) -> ConversionPlan:
    """The odd experts, requantized to their weight's common type, as a temporary GGUF."""
    from app.core.convert.plan_gguf import gguf_slice, torch_shape

    tensors = []
    for group in groups:
        common = group.common_type
        for index in group.odd_experts():
            entry, path = group.entries[index]
            size = int(entry.n_elements * element_bytes(common))
            tensors.append(TensorPlan(entry.name, common, torch_shape(entry), size,
                                      (gguf_slice(entry, path),),
                                      note=f"{entry.type_name} → {common} to match the other "
                                           f"experts of {group.name}"))
    return ConversionPlan(
        source=model.path, source_format="gguf", target=requantized_path(target), to="gguf",
        out_type="mixed", architecture=main.architecture or "?", tensors=tuple(tensors),
        overwrite=True, copy_metadata_from=None, metadata_bytes=4096,
        input_bytes=sum(t.n_bytes for t in tensors))


def requantized_path(target: Path) -> Path:
    """Where the requantized odd experts wait until they are stacked (removed afterwards)."""
    return target.with_name(target.name + ".experts")


def _check_outputs(model: ModelInfo, paths: list[Path], overwrite: bool) -> None:
    for path in paths:
        resolve_target(model, path, "F16", "gguf", overwrite=True)  # refuses the inputs
        if os.path.lexists(path) and not overwrite:
            raise BadInputError("output already exists", path=path,
                                hint="choose another name",
                                option=OptionFact("overwrite", True))


def plan_relayout(source: str | Path | ModelInfo, target: str | Path | None = None, *,
                  experts: str = "stacked", overwrite: bool = False,
                  split_max_bytes: int | None = None) -> RelayoutPlan:
    """Plan rewriting a MoE GGUF (one file or split shards) with its experts `stacked` or
    `split`; refuse dense models, a layout the file already has, and inconsistent experts.

    The output is one file, shards of at most `split_max_bytes`, or, for a split input without
    that option, as many shards as the input with each tensor in the shard its bytes come from.
    """
    from app.core.convert.plan_gguf import main_header, read_headers

    if experts not in LAYOUTS:
        raise OptionError(f"expert layout {experts!r} is not stacked or split",
                          option=OptionFact("experts"))
    layout: ExpertsLayout = "stacked" if experts == "stacked" else "split"
    model = source if isinstance(source, ModelInfo) else inspect_path(source)
    # A mix of layouts is fatal for loading, and exactly what a relayout repairs.
    blocking = [p for p in model.fatal_problems if p.kind != "expert-layout"]
    if blocking:
        raise FormatError(blocking[0].text, path=model.path, hint="nothing was written")
    if model.format != "gguf":
        raise UnsupportedError("relayout applies to GGUF files; this is a "
                               f"{model.format.upper()} model", path=model.path)
    # Stamped before the headers whose offsets the plan keeps are read (see file_stamp.py).
    stamps = stamp_files(model.files)
    headers = read_headers(model)
    main = main_header(headers)
    names = [t.name for h in headers for t in h.tensors]
    found = expert_layout(names)
    if found is None:
        raise UnsupportedError("the model has no expert tensors (blk.N.ffn_*_exps or "
                               "blk.N.ffn_*.E.weight): it is not a mixture of experts, there is "
                               "no expert layout to change", path=model.path)
    if found == layout:
        raise OptionError(f"the experts are already {layout}: {GGUF_EXPERT_LAYOUTS[layout]}",
                          path=model.path)
    n_expert = expert_count(main)
    path = Path(target) if target is not None else default_relayout_path(model, layout)
    if path.is_dir():
        path = path / default_relayout_path(model, layout).name
    path = path.absolute()
    tensors, mixed = _plan_tensors(headers, layout, n_expert)
    moved = sum(1 for t in tensors if t.note)
    notes = [f"experts {found} → {layout}: {moved} tensor(s) made of moved expert bytes, "
             f"{len(tensors) - moved} copied unchanged; nothing dequantized"]
    warnings = []
    for group in mixed:
        odd = ", ".join(group.entries[i][0].name for i in group.odd_experts())
        warnings.append(f"the experts of {group.name} have different types: {odd} requantized "
                        f"to {group.common_type} (dequantize → quantize), every other expert's "
                        "bytes moved unchanged")
    files = [h.path for h in headers]
    if split_max_bytes is not None:
        shard_of = assign_by_size(tensors, split_max_bytes)
    else:
        shard_of = [files.index(t.slices[0].file) for t in tensors]  # type: ignore[arg-type]
    count = max(shard_of) + 1
    if count > 1:
        notes.append(f"written as {count} shards (split.no/split.count as gguf-split writes)")
    elif len(headers) > 1:
        notes.append(f"{len(headers)} split shards joined into one file")
    extra_infos = TENSOR_INFO_BYTES * max(0, len(tensors) - sum(len(h.tensors) for h in headers))
    plan = ConversionPlan(
        source=model.path, source_format="gguf", target=path, to="gguf",
        out_type=model.quantization or "mixed", architecture=main.architecture or "?",
        tensors=tuple(tensors), overwrite=overwrite, copy_metadata_from=main.path,
        metadata_bytes=main.data_offset + extra_infos, input_bytes=model.file_size,
        notes=tuple(notes), warnings=tuple(warnings), inputs=tuple(model.files),
        input_stamps=stamps)
    plans = shard_plans(plan, shard_of)
    _check_outputs(model, [p.target for p in plans], overwrite)
    requantize = replace(_requantize_plan(model, main, plans[0].target, mixed),
                         inputs=plan.inputs, input_stamps=stamps) if mixed else None
    return RelayoutPlan(plans, layout, requantize)


def _restack_from(plan: ConversionPlan, requantized: Path) -> ConversionPlan:
    """`plan` with each odd expert's slice taken from the requantized temporary file."""
    from app.core.convert.plan_gguf import gguf_slice

    header = read_gguf_header(requantized)
    done = {e.name: gguf_slice(e, requantized) for e in header.tensors}
    tensors = tuple(
        replace(t, slices=tuple(done.get(p.tensor, p) for p in t.slices))
        if any(p.tensor in done for p in t.slices) else t
        for t in plan.tensors)
    return replace(plan, tensors=tensors)


def execute_relayout(planned: RelayoutPlan, reporter: Reporter,
                     check_memory: bool = True) -> ConvertResult:
    """Write every output file; a failure or cancel removes the files already written."""
    start = time.monotonic()
    check_unchanged(planned.plan.input_stamps)  # before the first file of several is written
    check_disk(planned.disk_check_plan())  # all outputs (and the temporary file) at once
    plans, extra = list(planned.plans), planned.requantize
    written: list[ConvertResult] = []
    try:
        if extra is not None:
            reporter.log("warning", f"requantizing {len(extra.tensors)} expert(s) whose type "
                                    "differs from the other experts of their weight "
                                    f"({format_bytes(extra.tensor_bytes)})")
            execute_plan(extra, reporter, check_memory)
            plans = [_restack_from(plan, extra.target) for plan in plans]
        for plan in plans:
            written.append(execute_plan(plan, reporter, check_memory))
    except BaseException:
        for result in written:
            result.output.unlink(missing_ok=True)
        raise
    finally:
        if extra is not None:
            extra.target.unlink(missing_ok=True)
            part_path(extra.target).unlink(missing_ok=True)
    return ConvertResult(written[0].output, sum(r.bytes_written for r in written),
                         sum(r.tensors_written for r in written), time.monotonic() - start,
                         warnings=planned.plan.warnings)


@dataclass(frozen=True)
class RelayoutRequest:
    """Job: rewrite a MoE GGUF with its experts stacked or split (bytes moved, not requantized)."""

    source: Path
    target: Path | None = None
    experts: str = "stacked"
    overwrite: bool = False
    split_max_bytes: int | None = None  # shards of at most this size (None: as the input)
    check_memory: bool = True
    progress_unit: ProgressUnit = "bytes"
    # Loads torch and whole tensors: a crash must not take the window with it.
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return f"Relayout {Path(self.source).name}: experts {self.experts}"

    def plan(self) -> RelayoutPlan:
        return plan_relayout(self.source, self.target, experts=self.experts,
                             overwrite=self.overwrite, split_max_bytes=self.split_max_bytes)

    def run(self, reporter: Reporter) -> ConvertResult:
        reporter.log("info", f"planning {self.title.lower()}")
        return execute_relayout(self.plan(), reporter, self.check_memory)


@dataclass(frozen=True)
class PlannedRelayout:
    """Job: a relayout already planned and checked (the CLI and the window plan first, to
    refuse bad input before anything is queued); runs that plan without planning again."""

    planned: RelayoutPlan
    title: str
    check_memory: bool = True
    progress_unit: ProgressUnit = "bytes"
    # Loads torch and whole tensors: a crash must not take the window with it.
    runs_in_child_process: ClassVar[bool] = True

    @classmethod
    def of(cls, request: RelayoutRequest, planned: RelayoutPlan) -> PlannedRelayout:
        return cls(planned, request.title, request.check_memory, request.progress_unit)

    def run(self, reporter: Reporter) -> ConvertResult:
        return execute_relayout(self.planned, reporter, self.check_memory)
