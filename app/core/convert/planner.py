"""`plan_conversion`: inspect the source, check the options and the output path, and dispatch to
the planner of the source/target pair. Pure: reads headers, writes nothing."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from app.core.convert.naming import default_output_name
from app.core.convert.plan import ConversionPlan, Device, OutputFormat
from app.core.convert.tensor_types import parse_output_type
from app.core.cuda import resolve_device
from app.core.errors import BadInputError, FormatError, OptionError, OptionFact, UnsupportedError
from app.core.formats.file_stamp import stamp_files
from app.core.formats.model_info import ModelInfo
from app.core.formats.scan import inspect_path
from app.core.quant.overrides import TypeOverrides


def load_source(source: str | Path | ModelInfo) -> ModelInfo:
    model = source if isinstance(source, ModelInfo) else inspect_path(source)
    fatal = model.fatal_problems
    if fatal:
        raise FormatError(fatal[0].text, path=model.path, hint="nothing was converted")
    if model.format == "pickle":
        raise UnsupportedError("weights are pickle files, which Modelyard does not open "
                               "(unpickling can run code)", path=model.path,
                               hint="use a safetensors version of the model")
    return model


def _inputs_under(folder: Path, inputs: tuple[Path, ...]) -> list[Path]:
    folder = folder.resolve()
    return [p for p in inputs if folder == p.resolve().parent or folder in p.resolve().parents]


def resolve_target(model: ModelInfo, target: str | Path | None, out_type: str, to: OutputFormat,
                   overwrite: bool) -> Path:
    """The output path, refused when it exists (unless `overwrite`) or would replace an input."""
    if target is None:
        path = model.path.parent / default_output_name(model, out_type, to)
    else:
        path = Path(target).expanduser()
        if to == "gguf" and path.is_dir():
            path = path / default_output_name(model, out_type, to)
    return check_target(path.absolute(), model.path, tuple(model.files), to, overwrite)


def check_target(path: Path, source: Path, inputs: tuple[Path, ...], to: OutputFormat,
                 overwrite: bool) -> Path:
    """`path` itself, refused when it exists (unless `overwrite`) or would replace an input."""
    every = inputs + ((source,) if source.is_dir() else ())
    resolved = path.resolve()
    if any(resolved == p.resolve() for p in every):
        raise BadInputError("the output would overwrite the model being converted", path=path,
                            hint="choose another output name")
    if to == "hf":
        clobbered = _inputs_under(path, inputs)
        if clobbered and (path.exists() or path.resolve() == source.resolve()):
            raise BadInputError(f"the output folder holds the input {clobbered[0].name}, which "
                                "writing it would replace", path=path,
                                hint="choose a new folder")
    if os.path.lexists(path) and not overwrite:
        raise BadInputError("output already exists", path=path,
                            hint="choose another name",
                            option=OptionFact("overwrite", True))
    if not path.parent.is_dir():
        raise BadInputError("output folder does not exist", path=path.parent)
    return path


def plan_conversion(source: str | Path | ModelInfo, target: str | Path | None = None, *,
                    out_type: str = "F16", to: OutputFormat = "gguf", device: str = "cpu",
                    keep_type: str | None = None, overwrite: bool = False,
                    require_tokenizer: bool = False, pure: bool = False,
                    type_overrides: TypeOverrides | None = None,
                    imatrix: str | Path | None = None) -> ConversionPlan:
    """Plan converting `source` (an HF folder or a GGUF) to `target`; refuse what cannot work.

    `out_type` is a GGUF target (F16, Q8_0, Q4_K_M, ...) for `to="gguf"` — each tensor gets the
    type llama-quantize would give it, or the target's one type with `pure` — or F16/BF16/F32
    for `to="hf"`. `type_overrides` are llama-quantize's per-tensor type options (GGUF output
    only). `target=None` puts the output beside the source (`default_output_name`).
    `imatrix` (a llama.cpp importance matrix file) weights the quantizers as llama-quantize
    --imatrix does.
    """
    plan = _plan_conversion(source, target, out_type=out_type, to=to, device=device,
                            keep_type=keep_type, overwrite=overwrite,
                            require_tokenizer=require_tokenizer, pure=pure,
                            type_overrides=type_overrides)
    if imatrix is None:
        return plan
    from app.core.convert.importance import attach_importance

    return attach_importance(plan, imatrix)


def _plan_conversion(source: str | Path | ModelInfo, target: str | Path | None, *,
                     out_type: str, to: OutputFormat, device: str, keep_type: str | None,
                     overwrite: bool, require_tokenizer: bool, pure: bool,
                     type_overrides: TypeOverrides | None) -> ConversionPlan:
    if to not in ("gguf", "hf"):
        raise OptionError(f"output format {to!r} is not gguf or hf", option=OptionFact("to"))
    out_type = parse_output_type(out_type, to)
    model = load_source(source)
    dev = resolve_device(device)
    path = resolve_target(model, target, out_type, to, overwrite)
    if keep_type and not (model.format == "gguf" and to == "gguf"):
        raise OptionError("a keep-type pattern applies to GGUF → GGUF requantization only",
                          option=OptionFact("keep_type"))
    # Stamped before the planner reads the headers it takes offsets from: a change at any
    # later moment, even while they are read, makes the stamp disagree.
    stamps = stamp_files(model.files)
    plan = _dispatch(model, path, out_type, to, dev, keep_type, overwrite, require_tokenizer,
                     pure, type_overrides)
    return replace(plan, inputs=tuple(model.files), input_stamps=stamps)


def _dispatch(model: ModelInfo, path: Path, out_type: str, to: OutputFormat, dev: Device,
              keep_type: str | None, overwrite: bool, require_tokenizer: bool,
              pure: bool, type_overrides: TypeOverrides | None) -> ConversionPlan:
    if model.format == "hf":
        if to == "hf":
            from app.core.convert.plan_hf import BNB_QUANTIZATIONS

            if model.quantization not in BNB_QUANTIZATIONS:
                raise OptionError("the source is already a Hugging Face model; convert it to "
                                  "gguf")
            from app.core.convert.plan_bnb_hf import plan_bnb_to_hf

            return plan_bnb_to_hf(model, path, out_type, dev, overwrite)
        from app.core.convert.plan_hf import plan_hf_to_gguf

        return plan_hf_to_gguf(model, path, out_type, dev, overwrite, require_tokenizer, pure,
                               type_overrides)
    if to == "gguf":
        from app.core.convert.plan_gguf import plan_gguf_to_gguf

        return plan_gguf_to_gguf(model, path, out_type, dev, overwrite, keep_type, pure,
                                 type_overrides)
    if type_overrides:
        raise OptionError("per-tensor types apply to GGUF output only, not to a Hugging Face "
                          "folder", option=OptionFact("tensor_types"))
    from app.core.convert.plan_gguf_hf import plan_gguf_to_hf

    return plan_gguf_to_hf(model, path, out_type, dev, overwrite, require_tokenizer)


def plan_for_type(plan: ConversionPlan, out_type: str,
                  target: str | Path | None = None) -> ConversionPlan:
    """The same conversion to another type (and output path), without reading the source
    again: sizes, memory and fallbacks for each type a GUI or the fit estimator offers."""
    from gguf import GGUFValueType

    from app.core.convert.metadata import MetaEntry, replace_entry
    from app.core.convert.sizing import element_bytes
    from app.core.convert.tensor_types import assign_types, file_type_of

    out_type = parse_output_type(out_type, plan.to)
    if target is not None:
        path = check_target(Path(target).expanduser().absolute(), plan.source, plan.inputs,
                            plan.to, plan.overwrite)
        plan = replace(plan, target=path)
    if plan.to == "hf":
        tensors = tuple(
            tensor if tensor.fixed_type else replace(
                tensor, out_type=out_type, n_bytes=int(tensor.n_elements * element_bytes(out_type)),
                copy=not tensor.permute and all(s.dtype == out_type for s in tensor.slices))
            for tensor in plan.tensors)
        output = plan.hf_output
        if output is not None and not output.through_transformers:
            from app.core.convert.plan_bnb_hf import clean_config

            output = replace(output, config=clean_config(output.config, out_type))
        return replace(plan, out_type=out_type, tensors=tensors, hf_output=output)
    rules = plan.type_rules
    assert rules is not None, "a GGUF plan records its type rules"
    tensors = assign_types(plan.tensors, out_type, rules.hparams, pure=rules.pure,
                           keep_source=rules.keep_source, overrides=rules.overrides)
    metadata = plan.metadata
    if any(e.key == "general.file_type" for e in metadata):
        metadata = replace_entry(metadata, MetaEntry("general.file_type",
                                                     int(file_type_of(out_type)),
                                                     GGUFValueType.UINT32))
    return replace(plan, out_type=out_type, tensors=tensors, metadata=metadata)
