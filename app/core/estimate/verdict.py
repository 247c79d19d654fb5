"""Will it fit? Verdicts for a model on a target, the best quant that fits, the longest context.

A target is this machine (free RAM and each GPU's free VRAM now), the CPU only, or amounts the
user types in. Everything keeps a safety margin: 5 % of the capacity plus 256 MiB, because other
programs, fragmentation and estimate error all eat into what looks free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.core.errors import OptionError, OptionFact
from app.core.estimate.breakdown import GIB, MIB, RunEstimate
from app.core.estimate.llama_cpp import estimate_gguf_run
from app.core.estimate.shape import model_shape
from app.core.estimate.transformers_load import estimate_hf_load
from app.core.formats.model_info import ModelInfo, format_bytes
from app.core.resources import Resources

MARGIN_FRACTION = 0.05
MARGIN_BYTES = 256 * MIB
MIN_CONTEXT = 256
DEFAULT_CONTEXT = 4096

VerdictKind = Literal["gpu", "partial", "ram", "none", "unknown"]
Runtime = Literal["auto", "llama.cpp", "transformers"]


def gguf_runtime(runtime: Runtime = "auto") -> Literal["llama.cpp", "transformers"]:
    """What will run a GGUF: llama.cpp when llama-cpp-python is installed, else transformers'
    GGUF loader (dequantized to float32: several times the file's size in memory)."""
    if runtime != "auto":
        return runtime
    import importlib.util

    return "llama.cpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"


def usable(capacity: int) -> int:
    return max(int(capacity * (1 - MARGIN_FRACTION)) - MARGIN_BYTES, 0)


@dataclass(frozen=True)
class Machine:
    name: str
    ram_bytes: int  # RAM available to the model
    gpu_free: tuple[int, ...] = ()  # VRAM free on each GPU

    @classmethod
    def from_resources(cls, resources: Resources, cpu_only: bool = False) -> Machine:
        gpus = () if cpu_only else tuple(g.free_bytes for g in resources.gpus)
        name = "CPU only" if cpu_only or not gpus else "this machine"
        return cls(name, resources.ram_available, gpus)

    @classmethod
    def custom(cls, vram_gib: float | None, ram_gib: float | None,
               resources: Resources | None = None) -> Machine:
        """A machine the user describes; what is not given comes from this machine."""
        for label, value in (("vram", vram_gib), ("ram", ram_gib)):
            if value is not None and value <= 0:
                raise OptionError(f"the target's {label.upper()} must be more than 0 GiB, not "
                                  f"{value}", option=OptionFact(label))
        if ram_gib is None and resources is None:
            raise OptionError("give the RAM of the target machine")
        ram = int(ram_gib * GIB) if ram_gib is not None else resources.ram_available  # type: ignore[union-attr]
        gpus = (int(vram_gib * GIB),) if vram_gib is not None else (
            tuple(g.free_bytes for g in resources.gpus) if resources else ())
        return cls("custom", ram, gpus)

    @property
    def usable_ram(self) -> int:
        return usable(self.ram_bytes)

    @property
    def usable_vram(self) -> tuple[int, ...]:
        return tuple(usable(free) for free in self.gpu_free)


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    text: str
    estimate: RunEstimate | None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"verdict": self.kind, "verdict_text": self.text}
        if self.estimate is not None:
            data.update(self.estimate.to_json())
        return data


def _fits(estimate: RunEstimate, target: Machine) -> tuple[bool, bool]:
    ram_ok = estimate.ram.total <= target.usable_ram
    vram_ok = all(part.total <= free
                  for part, free in zip(estimate.vram, target.usable_vram, strict=False))
    return ram_ok, vram_ok


def _describe(estimate: RunEstimate, target: Machine) -> Verdict:
    ram_ok, vram_ok = _fits(estimate, target)
    need = f"needs {format_bytes(estimate.ram.total)} RAM"
    if estimate.vram_total:
        need += f" + {format_bytes(estimate.vram_total)} VRAM"
    have = f"usable {format_bytes(target.usable_ram)} RAM"
    if target.gpu_free:
        have += f" + {format_bytes(sum(target.usable_vram))} VRAM"
    if not (ram_ok and vram_ok):
        return Verdict("none", f"does not fit: {need}, {have}", estimate)
    if estimate.gpu_layers and estimate.gpu_layers >= estimate.total_layers:
        return Verdict("gpu", f"fits on GPU: {need}", estimate)
    if estimate.gpu_layers:
        return Verdict("partial", f"fits with {estimate.gpu_layers} of {estimate.total_layers} "
                                  f"layers on GPU: {need}", estimate)
    return Verdict("ram", f"fits in RAM only: {need}", estimate)


def _run(model: ModelInfo, context: int, gpu_layers: int, target: Machine,
         cache_type: str, flash_attention: bool, runtime: Runtime = "auto") -> RunEstimate:
    if model.format == "gguf" and gguf_runtime(runtime) == "llama.cpp":
        return estimate_gguf_run(model, context, gpu_layers, target.gpu_free, cache_type,
                                 flash_attention)
    return estimate_hf_load(model, context, gpu_free=target.gpu_free if gpu_layers else (),
                            gpu_layers=gpu_layers)


def judge(model: ModelInfo, target: Machine, context: int = DEFAULT_CONTEXT,
          gpu_layers: int | None = None, cache_type: str = "F16",
          flash_attention: bool = False, runtime: Runtime = "auto") -> Verdict:
    """Where `model` can run on `target` at `context` tokens; the most GPU layers that fit
    unless `gpu_layers` is given. A GGUF is judged for the runtime that will run it."""
    if context <= 0:
        raise OptionError(f"context length must be positive, not {context}")
    if model.format == "pickle":
        return Verdict("unknown", "unknown: pickle weights are not opened, so their size in "
                                  "memory is not known", None)
    if model.fatal_problems:
        return Verdict("unknown", f"unknown: {model.fatal_problems[0].text}", None)
    llama_cpp = model.format == "gguf" and gguf_runtime(runtime) == "llama.cpp"
    total_layers = model_shape(model).n_layer + (1 if llama_cpp else 0)

    def run(layers: int) -> RunEstimate:
        return _run(model, context, layers, target, cache_type, flash_attention, runtime)

    if gpu_layers is not None or not target.gpu_free:
        return _describe(run(0 if not target.gpu_free else gpu_layers or 0), target)
    best = run(total_layers)
    if all(_fits(best, target)):
        return _describe(best, target)
    # VRAM need grows with each offloaded layer: find the most that fit by bisection.
    low, high = 0, total_layers
    while low < high:
        middle = (low + high + 1) // 2
        _, vram_ok = _fits(run(middle), target)
        low, high = (middle, high) if vram_ok else (low, middle - 1)
    return _describe(run(low), target)


def gpu_layers_that_fit(model: ModelInfo, gpu_free: Sequence[int], ram_bytes: int,
                        context: int, runtime: Runtime = "auto", cache_type: str = "F16",
                        flash_attention: bool = False) -> int:
    """The layers the loader offloads: the most the Fit verdict says fit, with its margins."""
    if not gpu_free:
        return 0
    verdict = judge(model, Machine("this machine", ram_bytes, tuple(gpu_free)), context,
                    cache_type=cache_type, flash_attention=flash_attention, runtime=runtime)
    return verdict.estimate.gpu_layers if verdict.estimate is not None else 0


def fully_fits(verdict: Verdict, target: Machine) -> bool:
    """On a GPU target, the whole model on the GPU; on a CPU target, in RAM."""
    return verdict.kind == "gpu" if target.gpu_free else verdict.kind == "ram"


def max_context(model: ModelInfo, target: Machine, limit: int | None = None,
                **options: Any) -> int | None:
    """The longest context (a multiple of 256) at which the model still fully fits."""
    ceiling = limit or model_shape(model).n_ctx_train or 131072
    ceiling = max(ceiling // MIN_CONTEXT * MIN_CONTEXT, MIN_CONTEXT)
    if not fully_fits(judge(model, target, MIN_CONTEXT, **options), target):
        return None
    low, high = MIN_CONTEXT, ceiling
    while low < high:
        middle = (low + high + MIN_CONTEXT) // 2 // MIN_CONTEXT * MIN_CONTEXT
        if fully_fits(judge(model, target, middle, **options), target):
            low = middle
        else:
            high = middle - MIN_CONTEXT
    return low


@dataclass(frozen=True)
class Candidate:
    """One way to get the model: the file as it is, another existing file, or a conversion to
    `quant`."""

    label: str
    quant: str
    model: ModelInfo  # the file, or the GGUF a conversion would write (planned tensors)
    writable: bool = True  # can Modelyard produce it today (always true for existing files)
    existing: bool = False
    keep: bool = False  # the selected file itself, used as it is
    source_quant: str | None = None  # a conversion's source type, when the source is a GGUF

    @property
    def requantizes(self) -> bool:
        """A conversion that quantizes already-quantized weights again: the errors stack."""
        return (not self.existing and self.source_quant is not None
                and quality_rank(self.source_quant) > quality_rank("BF16"))

    @property
    def upward(self) -> bool:
        """A conversion to a bigger type than the source's: no quality comes back."""
        return (not self.existing and self.source_quant is not None
                and quality_rank(self.quant) < quality_rank(self.source_quant))
    preferred: bool = False  # recommended whenever it fits (Q4_K_M of an unquantized source)


@dataclass(frozen=True)
class CandidateFit:
    candidate: Candidate
    verdict: Verdict
    recommended: bool = False


def recommend(candidates: Sequence[Candidate], target: Machine,
              context: int = DEFAULT_CONTEXT, **options: Any) -> list[CandidateFit]:
    """A verdict for every candidate (best quality first) and one marked recommended.

    The file as it is comes first: when it fully fits it is the answer. Otherwise the best
    writable candidate that fully fits, preferring what adds no quantization error (an existing
    file, a conversion from unquantized weights — Q4_K_M first, the quant most people pick)
    over quantizing a quantized file again; a
    conversion to a bigger type than a quantized source is never the answer. If nothing fully
    fits, what runs at all (offloading part of it, or on the CPU), in the same order, beats
    recommending nothing.
    """
    ranked = sorted(candidates, key=lambda c: (not c.keep, quality_rank(c.quant)))
    fits = [CandidateFit(c, judge(c.model, target, context, **options)) for c in ranked]
    eligible = [(i, f) for i, f in enumerate(fits)
                if f.candidate.writable and not f.candidate.upward]
    preference = (lambda c: c.keep, lambda c: c.preferred and not c.requantizes,
                  lambda c: not c.requantizes, lambda c: c.requantizes)
    for acceptable in (lambda v: fully_fits(v, target), lambda v: v.kind in ("partial", "ram")):
        for preferred in preference:
            for index, fit in eligible:
                if preferred(fit.candidate) and acceptable(fit.verdict):
                    fits[index] = CandidateFit(fit.candidate, fit.verdict, recommended=True)
                    return fits
    return fits


# Best first: llama.cpp's own perplexity ordering of the file types.
QUALITY_ORDER = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q5_K_S", "Q5_0",
                 "Q4_K_M", "Q4_1", "Q4_K_S", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")


def quality_rank(quant: str) -> int:
    try:
        return QUALITY_ORDER.index(quant.upper())
    except ValueError:
        return len(QUALITY_ORDER)
