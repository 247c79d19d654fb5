"""The transformers backend: HF folders (bitsandbytes included) and GGUF files it can read.

Loading is deliberate: the placement planner decides which layers go to which GPU with an
explicit `device_map`; after loading, a checkpoint that lacked weights or a parameter left on
the `meta` device is an error naming them, never a later "cannot copy out of meta tensor".
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.cuda import cuda_oom_error, is_cuda_oom
from app.core.errors import (
    BadInputError,
    FormatError,
    JobError,
    ModelyardError,
    OptionFact,
    UnsafeInputError,
    UnsupportedError,
)
from app.core.formats.hf_config import config_value
from app.core.formats.model_info import ModelInfo
from app.core.generate.backends.base import DTYPE_BYTES, LoadOptions
from app.core.generate.findings import name_list
from app.core.generate.placement import (
    DeviceBudget,
    Placement,
    PlacementUnit,
    complete_device_map,
    hf_placement_units,
    plan_placement,
)
from app.core.heap import return_freed_buffers

if TYPE_CHECKING:
    from app.core.generate.backends.hf_model import TransformersModel

UNEXPECTED_KEYWORD = re.compile(r"got an unexpected keyword argument '(?P<name>[^']+)'")
UNKNOWN_MODEL_TYPE = re.compile(r"model type `(?P<type>[^`]+)`")


def modules_of(parameter_names: Iterable[str]) -> list[str]:
    """Module names owning the parameters (`a.b.weight` -> `a.b`), in first-seen order."""
    seen: dict[str, None] = {}
    for name in parameter_names:
        seen.setdefault(name.rsplit(".", 1)[0] if "." in name else name, None)
    return list(seen)


def meta_parameter_names(model: Any) -> list[str]:
    names = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    names += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    return names


def ensure_no_meta_parameters(model: Any, path: Path) -> None:
    """Raise, naming the modules, if loading left any weight without data (on `meta`)."""
    names = meta_parameter_names(model)
    if names:
        raise JobError(
            f"{len(names)} weight(s) were left without data on the 'meta' device after loading "
            f"(modules {name_list(modules_of(names))}); the model would fail with 'cannot "
            "copy out of meta tensor'", path=path,
            hint="the placement did not give them a device: free GPU/CPU memory or allow a "
                 "larger memory limit, and load again")


def ensure_all_weights_loaded(missing: Iterable[str], path: Path) -> None:
    """transformers fills weights missing from a checkpoint with random values: refuse."""
    missing = sorted(missing)
    if missing:
        raise FormatError(
            f"the checkpoint lacks {len(missing)} weight(s) the architecture needs: "
            f"{name_list(missing)}; transformers would fill them with random values and the "
            "model would produce garbage", path=path,
            hint="run `modelyard doctor` on it, and rebuild the checkpoint (a merge or "
                 "conversion dropped these tensors)")


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def checkpoint_dtype_name(info: ModelInfo) -> str:
    """The float dtype the checkpoint declares (config `dtype`/`torch_dtype`), else float32."""
    declared = config_value(info.metadata, "dtype", "torch_dtype")
    return declared if declared in DTYPE_BYTES else "float32"


def load_dtype_name(info: ModelInfo, options: LoadOptions) -> str:
    if options.dtype != "auto":
        return options.dtype
    # transformers dequantizes GGUF tensors to float32 unless told otherwise.
    return "float32" if info.format == "gguf" else checkpoint_dtype_name(info)


def plan_hf_placement(info: ModelInfo, dtype_name: str, gpus: tuple[DeviceBudget, ...],
                      ram_available: int, context: int) -> Placement:
    """Sequential placement for this checkpoint on these GPUs, the rest in RAM, by the Fit
    estimate: its margins on each GPU and on RAM, each layer with its KV cache, and the CUDA
    context and activations kept free on the GPUs (as `estimate_hf_load` counts them)."""
    from app.core.estimate.transformers_load import (
        CUDA_CONTEXT,
        estimate_hf_load,
        gpu_work_bytes,
    )
    from app.core.estimate.verdict import usable

    units = hf_placement_units(info, DTYPE_BYTES[dtype_name])
    if info.format == "gguf":
        # Dequantized by transformers: every parameter at the load dtype, placed as one.
        total = sum(t.n_params for t in info.tensors) * DTYPE_BYTES[dtype_name]
        units = [PlacementUnit("model", ("",), total)]
    run = estimate_hf_load(info, context, dtype=dtype_name)
    n_layers = sum(1 for u in units if u.is_layer)
    kv_per_layer = run.ram.kv_cache // n_layers if n_layers else 0
    units = [PlacementUnit(u.name, u.modules, u.n_bytes + kv_per_layer, True) if u.is_layer
             else u for u in units]
    fixed = CUDA_CONTEXT + gpu_work_bytes(info, context, dtype_name)
    budgets = [DeviceBudget(g.index, max(usable(g.free_bytes) - fixed, 0), g.name)
               for g in gpus]
    return plan_placement(units, budgets, cpu_bytes=usable(ram_available),
                          keep_room_for_tail=True)


def gpu_budgets() -> tuple[DeviceBudget, ...]:
    from app.core.resources import probe_gpus

    gpus, _ = probe_gpus()
    return tuple(DeviceBudget(g.index, g.free_bytes, g.name) for g in gpus)


def build_meta_model(config: Any, trust_remote_code: bool = False) -> Any:
    """The architecture with every weight on the `meta` device: names and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def translate_load_error(exc: Exception, path: Path) -> ModelyardError:
    """Known transformers failures as one sentence with the action to take."""
    import transformers

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    version = transformers.__version__
    keyword = UNEXPECTED_KEYWORD.search(str(exc))
    if isinstance(exc, TypeError) and keyword:
        return JobError(
            f"the model's code passes the keyword {keyword['name']!r}, which transformers "
            f"{version} does not accept ({text})", path=path,
            hint="install the transformers version the checkpoint was saved with (see "
                 "`modelyard doctor`), or use a version of the model's code made for "
                 f"transformers {version.split('.')[0]}")
    unknown = UNKNOWN_MODEL_TYPE.search(str(exc))
    if unknown and "does not recognize" in str(exc):
        return UnsupportedError(
            f"transformers {version} does not know the model type {unknown['type']!r}",
            path=path, hint="run `modelyard doctor` for the version to install")
    if "meta tensor" in str(exc):
        return JobError(f"a weight was left on the 'meta' device while loading ({text})",
                        path=path, hint="free memory or lower the GPU share, and load again")
    if is_cuda_oom(exc):
        return cuda_oom_error(exc, f"loading {path.name}")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return JobError(f"ran out of memory while loading ({text})", path=path,
                        hint="close other programs or use a smaller quantization")
    return JobError(f"transformers could not load the model ({type(exc).__name__}: {text})",
                    path=path, hint="run `modelyard doctor` on it")


def _source(info: ModelInfo) -> tuple[str, dict[str, Any]]:
    if info.format == "gguf":
        return str(info.path.parent), {"gguf_file": info.path.name}
    return str(info.path), {}


def requires_remote_code(info: ModelInfo) -> bool:
    """The checkpoint names a class only its own code defines (config `auto_map`)."""
    if info.format != "hf":
        return False
    import transformers

    auto_map = info.metadata.get("auto_map")
    architectures = info.metadata.get("architectures") or []
    known = all(isinstance(a, str) and hasattr(transformers, a) for a in architectures)
    return isinstance(auto_map, dict) and not (architectures and known)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars, load reports or per-call bitsandbytes notes on the console:
    Modelyard reports what matters itself."""
    import logging as std_logging

    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    bnb_logger = std_logging.getLogger("bitsandbytes")
    bnb_level = bnb_logger.level
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    bnb_logger.setLevel(std_logging.ERROR)
    # The GGUF reader draws its own tqdm bar, which disable_progress_bar does not reach.
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    gguf_bar = getattr(gguf_utils, "tqdm", None)
    if gguf_utils is not None and gguf_bar is not None:
        gguf_utils.tqdm = functools.partial(gguf_bar, disable=True)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        bnb_logger.setLevel(bnb_level)
        if gguf_utils is not None and gguf_bar is not None:
            gguf_utils.tqdm = gguf_bar  # type: ignore[attr-defined]
        if bars:
            logging.enable_progress_bar()


def load_pretrained(info: ModelInfo, *, dtype_name: str, device_map: dict[str, Any] | str,
                    max_memory: dict[Any, int] | None, trust_remote_code: bool) -> Any:
    """The one call to `from_pretrained`; whatever comes back is checked before it is used."""
    from transformers import AutoModelForCausalLM

    source, extra = _source(info)
    if extra:
        import transformers.modeling_gguf_pytorch_utils  # noqa: F401 - so its bar can be quietened
    try:
        with quiet_transformers():
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch_dtype(dtype_name), device_map=device_map,
                max_memory=max_memory, trust_remote_code=trust_remote_code,
                output_loading_info=True, **extra)
            model, loading_info = loaded
    except ModelyardError:
        raise
    except (OSError, ValueError, TypeError, RuntimeError, KeyError, AttributeError,
            ImportError, MemoryError) as exc:
        raise translate_load_error(exc, info.path) from exc
    ensure_all_weights_loaded(loading_info.get("missing_keys", ()), info.path)
    ensure_no_meta_parameters(model, info.path)
    model.eval()
    return model


def load_tokenizer(info: ModelInfo, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    source, extra = _source(info)
    if info.format == "hf" and not info.has_tokenizer:
        raise BadInputError("the folder has no tokenizer (tokenizer.json or tokenizer.model)",
                            path=info.path, hint="copy the tokenizer files of the source model "
                                                 "into it")
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                 **extra)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        raise translate_load_error(exc, info.path) from exc


def require_bitsandbytes_kernel(info: ModelInfo, device: str) -> None:
    """A bitsandbytes checkpoint loads only where bitsandbytes has kernels: check first."""
    from app.core.generate.doctor_hf import quantization_findings

    quant = info.metadata.get("quantization_config")
    if not isinstance(quant, dict) or quant.get("quant_method") != "bitsandbytes":
        return
    for finding in quantization_findings(info.metadata, device):
        if finding.severity == "error":
            raise UnsupportedError(finding.text, path=info.path, hint=finding.action)


def explicit_device_map(info: ModelInfo, placement: Placement,
                        trust_remote_code: bool = False) -> dict[str, Any]:
    """The planner's map (checkpoint module names), completed with every parameter and buffer
    the instantiated architecture has, so transformers never has to guess a device."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(info.path, trust_remote_code=trust_remote_code)
    model = build_meta_model(config, trust_remote_code)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return complete_device_map(placement.device_map, names)


def load_transformers_model(info: ModelInfo, options: LoadOptions) -> TransformersModel:
    """Load with deliberate placement; RAM and VRAM are checked before anything loads."""
    import psutil

    if info.format == "pickle":
        raise UnsafeInputError("the weights are pickle files, which Modelyard never unpickles",
                               path=info.path, hint="use a safetensors version of the model")
    if requires_remote_code(info) and not options.trust_remote_code:
        raise UnsafeInputError(
            "this model's architecture is defined by Python code shipped with it "
            f"({info.metadata.get('auto_map')}), which would run on loading", path=info.path,
            hint="allow remote code for this model only if you trust its source",
            option=OptionFact("trust_remote_code", True))
    dtype_name = load_dtype_name(info, options)
    budgets = gpu_budgets() if options.use_gpu else ()
    ram = int(psutil.virtual_memory().available)
    from app.core.generate.loader import generation_context_tokens

    placement = plan_hf_placement(info, dtype_name, budgets, ram,
                                  generation_context_tokens(info, options))
    if placement.uses_gpu and info.format == "hf":
        device_map: dict[str, Any] = explicit_device_map(info, placement,
                                                         options.trust_remote_code)
        max_memory: dict[Any, int] | None = placement.max_memory
    elif placement.uses_gpu:
        device_map, max_memory = dict(placement.device_map), placement.max_memory
    else:
        device_map, max_memory = {"": "cpu"}, None
    require_bitsandbytes_kernel(info, "cuda:0" if placement.uses_gpu else "cpu")
    tokenizer = load_tokenizer(info, options.trust_remote_code)
    # A forward pass's freed activations go back to the system instead of fragmenting the
    # heap: a steady peak, and the one the memory estimate describes.
    return_freed_buffers()
    model = load_pretrained(info, dtype_name=dtype_name, device_map=device_map,
                            max_memory=max_memory, trust_remote_code=options.trust_remote_code)
    context = info.context_length or int(getattr(model.config, "max_position_embeddings", 0)
                                         or 2048)
    backend = "transformers (GGUF)" if info.format == "gguf" else "transformers"
    from app.core.generate.backends.hf_model import TransformersModel

    return TransformersModel(model, tokenizer, backend=backend, placement=placement,
                             context_length=context)
