"""`plan_merge`: open every input's headers and decide, with proof, what happens to each tensor.

The output's tensors are the base model's (renumbered into the output's layers for `slices`),
so nothing the base has can go missing unnoticed; every input is matched to them through
canonical names (any expert layout), and a tensor an input lacks, or holds in another shape,
stops the merge before it starts with every offender listed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.core.errors import BadInputError, OptionError, OptionFact
from app.core.formats.file_stamp import FileStamp, stamp_files
from app.core.merge.canonical import Layout, split_layer, unit_shape, with_layer
from app.core.merge.config import (
    DTYPES,
    GTA_METHODS,
    NEEDS_BASE,
    MergeConfig,
    ModelRef,
    OutputSlice,
    SliceSource,
)
from app.core.merge.params import as_bool, as_float, resolve, tensor_seed
from app.core.merge.plan import (
    TORCH_DTYPE_NAMES,
    InputRef,
    MergePlan,
    TensorAction,
    model_index,
)
from app.core.merge.sources import ModelSource, dominant_float_dtype, open_source

VOCAB_WORDS = ("embed", "lm_head", "wte", "output.weight")
# Shown when a plan is refused: enough to act on without flooding a terminal.
MAX_LISTED = 12


def _layers(source: ModelSource) -> dict[int, dict[str, str]]:
    """layer index → {tail: tensor name} of one model."""
    layers: dict[int, dict[str, str]] = {}
    for name in source.tensors:
        parts = split_layer(name)
        if parts is not None:
            layers.setdefault(parts[1], {})[parts[2]] = name
    return layers


def _outside_layers(source: ModelSource) -> list[str]:
    return [n for n in source.tensors if split_layer(n) is None]


def _check_architectures(models: Sequence[ModelSource], used: Sequence[int]) -> None:
    kinds = {models[i].model_type for i in used if models[i].model_type}
    if len(kinds) > 1:
        listing = ", ".join(f"{models[i].label} is {models[i].model_type}" for i in used
                            if models[i].model_type)
        raise OptionError(f"the models have different architectures ({listing})",
                          hint="merge models of one architecture")


class _Planner:
    def __init__(self, config: MergeConfig, models: tuple[ModelSource, ...], base: int,
                 allow_partial: bool) -> None:
        self.config = config
        self.models = models
        self.base = base
        self.allow_partial = allow_partial
        self.method = config.merge_method
        self.actions: list[TensorAction] = []
        self.warnings: list[str] = []
        self.used_keys: list[set[str]] = [set() for _ in models]
        self.out_dtype = config.dtype or dominant_float_dtype(models[base])
        self.tokenizer_from = model_index(models, config.tokenizer_source) \
            if config.tokenizer_source else base
        self.vocab: Any = None
        if config.tokenizer_union:
            from app.core.merge.vocab import build_union

            order = [base] + [i for i in sorted({model_index(models, s.model)
                                                 for p in config.slices for s in p.sources})
                              if i != base]
            self.vocab = build_union(models, order, base, config.base_model is not None)

    def index(self, source: SliceSource) -> int:
        return model_index(self.models, source.model)

    def slice_base(self, piece: OutputSlice) -> int:
        ref = piece.base_model or self.config.base_model
        if ref is not None and any(s.model == ref for s in piece.sources):
            return model_index(self.models, ref)
        return self.index(piece.sources[0])

    # --- the output's tensors -------------------------------------------------------------
    def plan(self) -> None:
        slices = self.config.slices
        base_model = self.models[self.base]
        outside = _outside_layers(base_model)
        first = [n for n in outside if any(w in n for w in ("embed", "wte"))]
        last = [n for n in outside if n not in first]
        for name in first:
            self.tensor(name, name, self.base, None, slices[0], None, 0.0)
        out_layer = 0
        template_kinds = self.layer_kinds(base_model)
        for piece in slices:
            length = self.slice_length(piece)
            template = self.slice_base(piece)
            start = self.start(piece, template)
            template_layers = _layers(self.models[template])
            for offset in range(length):
                t = offset / (length - 1) if length > 1 else 1.0
                layer = template_layers.get(start + offset, {})
                for tail in sorted(template_kinds - set(layer)):
                    name = f"{self.layer_head(base_model)}.{out_layer}.{tail}"
                    self.refuse(name, f"missing from {self.models[template].label} layer "
                                      f"{start + offset} (its other layers have it)")
                for source_name in layer.values():
                    out_name = with_layer(source_name, out_layer)
                    self.tensor(out_name, source_name, template, start + offset, piece,
                                offset, t)
                out_layer += 1
        for name in last:
            self.tensor(name, name, self.base, None, slices[-1], None, 0.0)
        self.n_layers = out_layer
        self.unused_warnings()

    def layer_kinds(self, source: ModelSource) -> set[str]:
        kinds: set[str] = set()
        for tails in _layers(source).values():
            kinds.update(tails)
        return kinds

    def layer_head(self, source: ModelSource) -> str:
        for name in source.tensors:
            parts = split_layer(name)
            if parts is not None:
                return parts[0]
        return "model.layers"

    def slice_length(self, piece: OutputSlice) -> int:
        source = piece.sources[0]
        if source.layer_range is not None:
            return source.layer_range[1] - source.layer_range[0]
        counts = {s.model.label: len(_layers(self.models[self.index(s)]))
                  for s in piece.sources}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{k} has {v}" for k, v in counts.items())
            raise OptionError(f"the models have different numbers of layers ({listing})",
                              hint="merge models of the same size, or pick layers with slices")
        return next(iter(counts.values()))

    def start(self, piece: OutputSlice, model: int) -> int:
        for source in piece.sources:
            if self.index(source) == model:
                return source.layer_range[0] if source.layer_range else 0
        return 0

    # --- one tensor -----------------------------------------------------------------------
    def refuse(self, name: str, reason: str, shape: tuple[int, ...] = (),
               layout: Layout | None = None) -> None:
        self.actions.append(TensorAction(name, "refused", shape, self.out_dtype,
                                         layout or Layout(()), (), reason))

    def keys_at(self, layout: Layout, layer: int | None) -> list[tuple[str, tuple]]:
        return [(with_layer(u.key, layer) if layer is not None else u.key, u)
                for row in layout.units for u in row]

    def tensor(self, out_name: str, template_name: str, template: int, template_layer: int |
               None, piece: OutputSlice, offset: int | None, t: float) -> None:
        count = len(self.actions)
        self._tensor(out_name, template_name, template, template_layer, piece, offset, t)
        action = self.actions[-1]
        if len(self.actions) > count and self.vocab is not None and action.action != \
                "refused" and len(action.shape) == 2 and \
                any(w in out_name for w in VOCAB_WORDS) and not action.layout.fused:
            self.actions[-1] = replace(action, shape=(self.vocab.size, action.shape[1]),
                                       params={**action.params, "vocabulary": True})

    def _tensor(self, out_name: str, template_name: str, template: int, template_layer: int |
                None, piece: OutputSlice, offset: int | None, t: float) -> None:
        model = self.models[template]
        stored = model.tensors[template_name]
        layout = model.layout(template_name)
        shape = stored.shape
        # With a union vocabulary, token rows are laid out anew: only the rest must agree.
        in_union = self.vocab is not None and len(shape) == 2 and \
            any(w in out_name for w in VOCAB_WORDS) and not layout.fused
        rest = 1 if in_union else 0
        participants: list[tuple[SliceSource, int, int | None]] = []
        for source in piece.sources:
            index = self.index(source)
            if offset is None:
                layer = None
            else:
                layer = (source.layer_range[0] if source.layer_range else 0) + offset
            participants.append((source, index, layer))
        # The template itself first: it is the base of the slice where the method needs one.
        participants.sort(key=lambda p: p[1] != template)
        missing: list[str] = []
        mismatched: list[str] = []
        present: list[tuple[SliceSource, int, int | None]] = []
        for source, index, layer in participants:
            other = self.models[index]
            problem = None
            for key, unit in self.keys_at(layout, layer):
                want = unit_shape(unit, shape)
                have = other.unit_shape(key)
                if have is None:
                    problem = "missing"
                    break
                if have[rest:] != want[rest:]:
                    problem = f"{other.label} has {list(have)}, {model.label} {list(want)}"
                    break
            if problem is None:
                present.append((source, index, layer))
                for key, _unit in self.keys_at(layout, layer):
                    self.used_keys[index].add(key)
            elif problem == "missing":
                missing.append(other.label)
            else:
                mismatched.append(problem)
        names = {i: (with_layer(template_name, layer) if layer is not None else template_name)
                 for _s, i, layer in participants}

        def ref(p: tuple[SliceSource, int, int | None]) -> InputRef:
            return InputRef(p[1], names[p[1]], p[2])

        if not stored.is_float:
            self.used_keys[template].update(k for k, _u in self.keys_at(layout, template_layer))
            self.actions.append(TensorAction(out_name, "copied", shape, stored.dtype, layout,
                                             (ref(participants[0]),),
                                             f"{stored.dtype} tensor (not merged)"))
            return
        if mismatched:
            vocab = any(w in out_name for w in VOCAB_WORDS)
            if vocab and self.tokenizer_from == self.base and template == self.base:
                self.actions.append(TensorAction(
                    out_name, "copied", shape, self.out_dtype, layout, (ref(participants[0]),),
                    f"shape mismatch ({'; '.join(mismatched)}): vocabularies differ, the "
                    "base's is kept with its tokenizer"))
                return
            self.refuse(out_name, f"shapes disagree: {'; '.join(mismatched)}", shape, layout)
            return
        if missing and not self.allow_partial:
            self.refuse(out_name, f"missing from {', '.join(missing)}", shape, layout)
            return
        if len(present) == 1 and len(participants) > 1:
            self.actions.append(TensorAction(out_name, "copied", shape, self.out_dtype, layout,
                                             (ref(present[0]),), "present in one model only"))
            return
        if self.method == "passthrough":
            scale, _line = resolve("scale", self.scopes(present[0][0], piece), out_name, t,
                                   None)
            params = {} if scale is None else {"scale": as_float(scale)}
            self.actions.append(TensorAction(
                out_name, "merged" if params else "copied", shape, self.out_dtype, layout,
                (ref(present[0]),), "" if params else "passthrough", params))
            return
        if self.method in NEEDS_BASE and present[0][1] != template:
            self.refuse(out_name, f"missing from the base model {model.label}", shape, layout)
            return
        params = self.parameters(out_name, present, piece, t)
        self.actions.append(TensorAction(out_name, "merged", shape, self.out_dtype, layout,
                                         tuple(ref(p) for p in present), "", params))

    def scopes(self, source: SliceSource, piece: OutputSlice) -> list[dict]:
        return [source.parameters, piece.parameters, self.config.parameters]

    def parameters(self, name: str, present: list[tuple[SliceSource, int, int | None]],
                   piece: OutputSlice, t: float) -> dict[str, Any]:
        method = self.method
        shared = [piece.parameters, self.config.parameters]

        def need(key: str, scopes: list[dict], who: str, default: Any = KeyError) -> Any:
            try:
                value, line = resolve(key, scopes, name, t) if default is KeyError \
                    else resolve(key, scopes, name, t, default)
            except KeyError:
                raise OptionError(f"line {piece.line}: {method} needs `{key}` for {who} "
                                  f"(tensor {name})", path=self.config.path) from None
            try:
                return as_bool(value) if key in ("normalize", "rescale") else as_float(value)
            except ValueError as exc:
                where = f"line {line}: " if line else ""
                raise OptionError(f"{where}{key}: {exc}", path=self.config.path) from None

        if method == "slerp":
            return {"t": need("t", shared, "the merge")}
        if method == "linear":
            weights = [need("weight", self.scopes(s, piece), s.model.label)
                       for s, _i, _l in present]
            normalize = need("normalize", shared, "the merge", True)
            if normalize and abs(sum(weights)) < 1e-8:
                raise OptionError(f"the weights sum to 0 for tensor {name} and normalize is "
                                  "on (it divides by their sum)", path=self.config.path,
                                  hint="change the weights or set normalize: false")
            return {"weights": weights, "normalize": normalize}
        others = present[1:]
        weights = [need("weight", self.scopes(s, piece), s.model.label) for s, _i, _l in others]
        densities = [need("density", self.scopes(s, piece), s.model.label, 1.0)
                     for s, _i, _l in others]
        for value in densities:
            if not 0 < value <= 1:
                raise OptionError(f"density {value} for tensor {name} is outside (0, 1]",
                                  path=self.config.path)
        normalize = need("normalize", shared, "the merge", method == "ties")
        if normalize and others and abs(sum(weights)) < 1e-8:
            raise OptionError(f"the weights sum to 0 for tensor {name} and normalize is on "
                              "(it divides by their sum)", path=self.config.path,
                              hint="change the weights or set normalize: false")
        params = {"weights": weights, "densities": densities, "normalize": normalize,
                  "rescale": need("rescale", shared, "the merge", method.startswith("dare")),
                  "lambda": need("lambda", shared, "the merge", 1.0)}
        if method.startswith("dare"):
            params["seeds"] = [tensor_seed(self.config.seed, name, position)
                               for position in range(len(others))]
        assert method in GTA_METHODS
        return params

    def unused_warnings(self) -> None:
        # With slices, layers left out are the point of the merge: nothing to warn about.
        if not self.config.uses_models_form:
            return
        for index, model in enumerate(self.models):
            if model.ref not in self.input_refs():
                continue
            unused = sorted(set(model.units) - self.used_keys[index] - model.aliases)
            if unused:
                listed = ", ".join(unused[:MAX_LISTED])
                more = f" and {len(unused) - MAX_LISTED} more" if len(unused) > MAX_LISTED \
                    else ""
                self.warnings.append(f"{model.label} has tensors the base model does not "
                                     f"have; they are not written: {listed}{more}")

    def input_refs(self) -> set:
        return {s.model for piece in self.config.slices for s in piece.sources}


def output_config(planner: _Planner) -> dict[str, Any]:
    config = copy.deepcopy(planner.models[planner.base].config)
    if planner.vocab is not None:
        config["vocab_size"] = planner.vocab.size
    dtype = TORCH_DTYPE_NAMES[planner.out_dtype]
    for key in ("torch_dtype", "dtype"):
        if key in config or key == "dtype":
            config[key] = dtype
    if config.get("num_hidden_layers") not in (None, planner.n_layers):
        old = config["num_hidden_layers"]
        config["num_hidden_layers"] = planner.n_layers
        for key, value in list(config.items()):
            # Per-layer lists (attention kinds) follow the layers they describe.
            if isinstance(value, list) and len(value) == old and value:
                config[key] = _per_layer(planner, value)
    return config


def _per_layer(planner: _Planner, values: list[Any]) -> list[Any]:
    out = []
    for piece in planner.config.slices:
        length = planner.slice_length(piece)
        template = planner.slice_base(piece)
        start = planner.start(piece, template)
        for offset in range(length):
            index = start + offset
            out.append(values[index] if index < len(values) else values[-1])
    return out


def describe_refusal(plan_actions: Sequence[TensorAction]) -> str:
    refused = [a for a in plan_actions if a.action == "refused"]
    listed = "; ".join(f"{a.name} ({a.reason})" for a in refused[:MAX_LISTED])
    more = f"; and {len(refused) - MAX_LISTED} more" if len(refused) > MAX_LISTED else ""
    return f"{len(refused)} tensor(s) of the base model could not be merged: {listed}{more}"


def _is_gguf(ref: ModelRef) -> bool:
    return ref.path.is_file() and ref.path.suffix == ".gguf"


def weight_files(source: ModelSource) -> list[Path]:
    """The files a merge reads a model's tensors from at the offsets its headers gave."""
    files = [tensor.file for tensor in source.tensors.values()]
    if source.adapter is not None:
        files.append(source.adapter.weights)
    return list(dict.fromkeys(files))


def _open_models(config: MergeConfig) -> tuple[tuple[ModelSource, ...], tuple[FileStamp, ...]]:
    """Every input's headers, HF folders first, then GGUFs named after the base model; and
    the stamps of their weight files, each taken as soon as that model's headers are read."""
    from app.core.merge.gguf_source import open_gguf_source

    refs = config.all_models()
    stamps: list[FileStamp] = []

    def stamped(source: ModelSource) -> ModelSource:
        stamps.extend(stamp_files(weight_files(source)))
        return source

    opened = {ref: stamped(open_source(ref)) for ref in refs if not _is_gguf(ref)}
    wanted: set[str] = set()
    for source in opened.values():
        wanted.update(source.units)
    for ref in refs:
        if _is_gguf(ref):
            # Where the output's config and tokenizer come from, read through transformers.
            describes = ref in (config.base_model, config.tokenizer_source) or \
                ref == config.slices[0].sources[0].model and config.base_model is None
            opened[ref] = stamped(open_gguf_source(ref, wanted, describes=describes))
    return tuple(opened[ref] for ref in refs), tuple(dict.fromkeys(stamps))


def plan_merge(config: MergeConfig, target: str | Path, *, device: str = "cpu",
               allow_partial: bool = False, overwrite: bool = False,
               shard_bytes: int = 5 * 1000**3, gguf_type: str | None = None) -> MergePlan:
    """Plan `config` into `target` (a new folder). Reads headers only; raises OptionError or
    BadInputError for unusable input. A plan may hold refused tensors: `check_plan` stops it.
    """
    target = Path(target).expanduser().absolute()
    outputs = [target] + ([target.parent / f"{target.name}-{gguf_type.upper()}.gguf"]
                          if gguf_type else [])
    for output in outputs:
        if output.exists() and not overwrite:
            raise BadInputError("output already exists", path=output,
                                hint="choose another name",
                                option=OptionFact("overwrite", True))
    if not target.parent.is_dir():
        raise BadInputError("output folder does not exist", path=target.parent)
    models, stamps = _open_models(config)
    used = sorted({model_index(models, s.model) for p in config.slices for s in p.sources})
    base = model_index(models, config.slices[0].sources[0].model)
    if config.base_model is not None and model_index(models, config.base_model) in used:
        base = model_index(models, config.base_model)
    _check_architectures(models, used + [base])
    for model in models:
        if target == model.path or model.path in target.parents:
            raise BadInputError("the output would be written inside an input model",
                                path=target, hint="choose another output folder")
    planner = _Planner(config, models, base, allow_partial)
    planner.plan()
    if config.dtype is not None and config.dtype not in DTYPES.values():
        raise OptionError(f"dtype {config.dtype} is not supported", path=config.path)
    return MergePlan(config, target, models, base, planner.tokenizer_from,
                     tuple(planner.actions), planner.out_dtype, device, output_config(planner),
                     tuple(planner.warnings), overwrite, shard_bytes, gguf_type, planner.vocab,
                     stamps)


def check_plan(plan: MergePlan) -> None:
    """Refuse to start a plan that would leave a tensor of the base model out."""
    if plan.refused:
        raise BadInputError(describe_refusal(plan.actions), path=plan.config.path,
                            hint="fix or replace the input named, or merge models that match")
