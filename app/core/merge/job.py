"""The merge job request: a config (file or YAML text) and where to write, planned and run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.core.errors import InsufficientResourcesError, OptionError
from app.core.formats.model_info import format_bytes
from app.core.jobs import ProgressUnit, Reporter
from app.core.merge.config import MergeConfig, parse_config, read_config
from app.core.merge.plan import MergePlan
from app.core.resources import probe_disk

DEFAULT_SHARD_BYTES = 5 * 1000**3
# Room left on the disk beyond the output: file systems misbehave when completely full.
DISK_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True)
class MergeRequest:
    """Job: merge the models a mergekit YAML names into the folder `target`."""

    target: Path
    config_path: Path | None = None
    config_text: str | None = None  # used instead of the file (the GUI's dialog)
    device: str = "cpu"
    out_type: str | None = None  # also write a GGUF of this type
    overwrite: bool = False
    allow_partial: bool = False
    shard_bytes: int = DEFAULT_SHARD_BYTES
    seed: int | None = None  # overrides the config's
    check_memory: bool = True
    progress_unit: ProgressUnit = "bytes"

    @property
    def title(self) -> str:
        return f"Merge into {Path(self.target).name}"

    def config(self) -> MergeConfig:
        if self.config_text is not None:
            config = parse_config(self.config_text, self.config_path)
        else:
            assert self.config_path is not None
            config = read_config(self.config_path)
        if self.seed is not None:
            from dataclasses import replace

            config = replace(config, seed=self.seed)
        return config

    def plan(self) -> MergePlan:
        from app.core.convert import resolve_device, writable_output_types
        from app.core.merge.planner import plan_merge
        from app.core.quant.targets import get_target

        # An unknown type is refused (OptionError listing the types) before anything starts.
        out_type = get_target(self.out_type.strip().upper()).name if self.out_type else None
        if out_type is not None and out_type not in writable_output_types():
            raise OptionError(f"GGUF type {out_type} cannot be written yet",
                              hint=f"writable: {', '.join(writable_output_types())}")
        return plan_merge(self.config(), self.target, device=resolve_device(self.device),
                          allow_partial=self.allow_partial, overwrite=self.overwrite,
                          shard_bytes=self.shard_bytes, gguf_type=out_type)

    def run(self, reporter: Reporter):  # noqa: ANN201 - MergeResult, imported lazily (torch)
        from app.core.merge.execute import run_merge

        reporter.log("info", f"planning {self.title.lower()}")
        return run_merge(self.plan(), reporter, check_memory=self.check_memory)


def check_resources(plan: MergePlan) -> None:
    disk = probe_disk(plan.target.parent)
    needed = plan.output_bytes + DISK_MARGIN
    if disk.free_bytes < needed:
        raise InsufficientResourcesError(
            f"not enough disk space: the merge needs {format_bytes(needed)}, "
            f"{format_bytes(disk.free_bytes)} is free", needed_bytes=needed,
            available_bytes=disk.free_bytes, path=plan.target.parent,
            hint="free some space or choose another output folder")
    import psutil

    if plan.device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        if free < plan.estimated_peak_bytes:
            raise InsufficientResourcesError(
                f"not enough free VRAM: the merge needs about "
                f"{format_bytes(plan.estimated_peak_bytes)}, {format_bytes(free)} is free",
                needed_bytes=plan.estimated_peak_bytes, available_bytes=int(free))
        return
    available = int(psutil.virtual_memory().available)
    if available < plan.estimated_peak_bytes:
        raise InsufficientResourcesError(
            f"not enough free RAM: the merge needs about "
            f"{format_bytes(plan.estimated_peak_bytes)}, {format_bytes(available)} is "
            "available", needed_bytes=plan.estimated_peak_bytes, available_bytes=available,
            hint="close other programs and try again")
