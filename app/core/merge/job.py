"""The merge job request: a config (file or YAML text) and where to write, planned and run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from app.core.errors import OptionError, OptionFact
from app.core.jobs import ProgressUnit, Reporter
from app.core.merge.config import MergeConfig, parse_config, read_config
from app.core.merge.plan import MergePlan
from app.core.resource_checks import require_disk, require_memory

DEFAULT_SHARD_BYTES = 5 * 1000**3
# Room left on the disk beyond the output: file systems misbehave when completely full.


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
    # Loads torch and whole tensors: a crash must not take the window with it.
    runs_in_child_process: ClassVar[bool] = True
    # The plan already made and checked for this request (the window's sheet, the CLI): the
    # job runs it as it is instead of planning again.
    program: MergePlan | None = field(default=None, compare=False, repr=False)

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
        try:
            out_type = get_target(self.out_type.strip().upper()).name if self.out_type else None
        except OptionError as exc:
            raise OptionError(exc.reason, hint=exc.hint, option=OptionFact("out_type")) from None
        if out_type is not None and out_type not in writable_output_types():
            raise OptionError(f"GGUF type {out_type} cannot be written yet",
                              hint=f"writable: {', '.join(writable_output_types())}",
                              option=OptionFact("out_type"))
        return plan_merge(self.config(), self.target, device=resolve_device(self.device),
                          allow_partial=self.allow_partial, overwrite=self.overwrite,
                          shard_bytes=self.shard_bytes, gguf_type=out_type)

    def run(self, reporter: Reporter):  # noqa: ANN201 - MergeResult, imported lazily (torch)
        from app.core.merge.execute import run_merge

        plan = self.program
        if plan is None:
            reporter.log("info", f"planning {self.title.lower()}")
            plan = self.plan()
        return run_merge(plan, reporter, check_memory=self.check_memory)


def check_resources(plan: MergePlan) -> None:
    require_disk(plan.target.parent, plan.output_bytes, "the merge")
    # The merge's peak is on the device it computes on.
    on_gpu, peak = plan.device.startswith("cuda"), plan.estimated_peak_bytes
    require_memory(plan.device, 0 if on_gpu else peak, peak if on_gpu else 0, "the merge")

