"""Describe GGUF models (single files and split shards) from their headers."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from gguf import MODEL_ARCH_NAMES, LlamaFileType

from app.core.errors import BadInputError
from app.core.formats.gguf_header import GGUFHeader, SkippedArray, read_gguf_header
from app.core.formats.model_info import (
    ExpertLayout,
    ModelInfo,
    MoEInfo,
    Problem,
    TensorInfo,
    broken_model,
)

SPLIT_NAME = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
STACKED_EXPERTS = re.compile(r"^blk\.\d+\.ffn_[a-z_]+_exps\.weight$")
SPLIT_EXPERTS = re.compile(r"^blk\.\d+\.ffn_(gate|up|down)\.\d+\.weight$")
KNOWN_ARCHITECTURES = frozenset(MODEL_ARCH_NAMES.values())
# The quant tag GGUF publishers append to a model's name: Name-Q4_K_M, Name.Q8_0, name-f16.
QUANT_TAG = re.compile(r"[-._](F32|F16|BF16|Q\d_K(_[SML])?|Q\d_\d|IQ\d_\w+|TQ\d_\d|MXFP4\w*)$",
                       re.IGNORECASE)


def split_shard_info(path: Path) -> tuple[str, int, int] | None:
    """(base name, shard number, shard count) for `name-00001-of-00003.gguf`, else None."""
    match = SPLIT_NAME.match(path.name)
    if not match:
        return None
    return match["base"], int(match["index"]), int(match["count"])


def quant_family(name: str) -> str:
    """The model name without its quant tag, to group a repo's quants of one model."""
    return QUANT_TAG.sub("", name).lower()


def quant_siblings(model: ModelInfo, models: Sequence[ModelInfo]) -> list[ModelInfo]:
    """The GGUF files of the same model beside it (a folder or repo of quants), itself
    included; empty when it stands alone."""
    if model.format != "gguf":
        return []
    family = quant_family(model.name)
    same = [m for m in models if m.format == "gguf" and m.path.parent == model.path.parent
            and quant_family(m.name) == family]
    return same if len(same) > 1 else []


def expert_layout(names: Sequence[str]) -> ExpertLayout | None:
    stacked = any(STACKED_EXPERTS.match(n) for n in names)
    split = any(SPLIT_EXPERTS.match(n) for n in names)
    if stacked and split:
        return "mixed"
    if stacked:
        return "stacked"
    if split:
        return "split"
    return None


# The two GGUF expert layouts, and which runtimes load each.
GGUF_EXPERT_LAYOUTS: dict[str, str] = {
    "stacked": "one tensor per weight holding every expert (blk.N.ffn_*_exps.weight)",
    "split": "one tensor per expert (blk.N.ffn_*.E.weight)",
    "mixed": "some weights stacked, some one tensor per expert: a mix no runtime loads",
}
EXPERT_LAYOUT_RUNTIMES = (
    "current llama.cpp and the runtimes built on it (llama-cpp-python, Ollama, LM Studio) load "
    "only stacked experts; older llama.cpp builds and some other runtimes and tools load only "
    "split ones. Either layout converts to the other losslessly (bytes are moved, nothing is "
    "requantized)")


def explain_expert_layout(layout: ExpertLayout | None) -> str | None:
    """The layout found, then which runtimes expect which."""
    if layout is None:
        return None
    return f"{layout}: {GGUF_EXPERT_LAYOUTS[layout]}. {EXPERT_LAYOUT_RUNTIMES[0].upper()}" \
           f"{EXPERT_LAYOUT_RUNTIMES[1:]}."


def file_type_label(header: GGUFHeader) -> str | None:
    raw = header.get("general.file_type")
    if isinstance(raw, int):
        try:
            name = LlamaFileType(raw).name
        except ValueError:
            return None
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return None


def dominant_weight_type(tensors: Sequence[TensorInfo]) -> str | None:
    """The type holding most bytes among matrices (norms and biases stay F32 in every quant)."""
    by_bytes: Counter[str] = Counter()
    for tensor in tensors:
        if len([d for d in tensor.shape if d > 1]) >= 2:
            by_bytes[tensor.type] += tensor.n_bytes
    return by_bytes.most_common(1)[0][0] if by_bytes else None


def _scalar_metadata(fields: dict[str, object]) -> dict[str, object]:
    """Metadata small enough to show and serialise; long arrays become a length note."""
    shown: dict[str, object] = {}
    for key, value in fields.items():
        if isinstance(value, SkippedArray):
            shown[key] = f"[{value.length} × {value.item_type.name.lower()}]"
        else:
            shown[key] = value
    return shown


def _moe_info(header: GGUFHeader, names: Sequence[str]) -> MoEInfo | None:
    n_experts = header.arch_field("expert_count")
    layout = expert_layout(names)
    if not isinstance(n_experts, int) or n_experts <= 0:
        if layout is None:
            return None
        n_experts = 1 + max(
            (int(n.split(".")[3]) for n in names if SPLIT_EXPERTS.match(n)), default=-1)
    used = header.arch_field("expert_used_count")
    return MoEInfo(n_experts, used if isinstance(used, int) else None, layout,
                   explain_expert_layout(layout))


def _problems(header: GGUFHeader, moe: MoEInfo | None, has_tokenizer: bool) -> list[Problem]:
    problems: list[Problem] = []
    arch = header.architecture
    if arch is None:
        problems.append(Problem("no general.architecture key: no runtime can load this file",
                                fatal=True))
    elif arch not in KNOWN_ARCHITECTURES:
        problems.append(Problem(f"unknown architecture {arch!r}: this gguf-py/llama.cpp "
                                "does not know it"))
    if moe and moe.layout == "split":
        problems.append(Problem(
            "experts are stored one tensor per expert (blk.N.ffn_*.E.weight), which current "
            "llama.cpp does not load (it expects stacked blk.N.ffn_*_exps): relayout the "
            "experts to stacked; the bytes are moved, nothing is requantized",
            kind="expert-layout"))
    elif moe and moe.layout == "mixed":
        problems.append(Problem("experts are stored in both stacked and per-expert layouts; "
                                "no runtime loads this mix", fatal=True, kind="expert-layout"))
    if not has_tokenizer and header.get("general.type", "model") == "model":
        problems.append(Problem("no tokenizer in the file: runtimes cannot tokenize prompts"))
    return problems


def _tensors(header: GGUFHeader) -> list[TensorInfo]:
    return [TensorInfo(t.name, t.type_name, t.shape, t.n_bytes, t.n_elements, header.path)
            for t in header.tensors]


def _truncation_problems(header: GGUFHeader) -> list[Problem]:
    cut = header.truncated_tensors()
    if not cut:
        return []
    first = cut[0]
    return [Problem(
        f"{header.path.name} is truncated: tensor {first.name!r} ends at byte "
        f"{first.offset + first.n_bytes} but the file has {header.file_size} bytes "
        f"({len(cut)} tensor(s) cut off); re-download it", fatal=True)]


def describe_gguf(shards: Sequence[Path], expected_count: int | None = None,
                  name: str | None = None,
                  read_header: Callable[[Path], GGUFHeader] = read_gguf_header) -> ModelInfo:
    """Describe one GGUF model from its file or its split shards (sorted by shard number).

    Never raises for a bad file: what cannot be read becomes a problem on the model.
    `read_header` reads one shard's header (a remote reader gives headers read over HTTP).
    """
    first = shards[0]
    shard_info = split_shard_info(first)
    display = name or (shard_info[0] if shard_info else first.stem)
    files = tuple(shards)
    problems: list[Problem] = []
    if expected_count is not None:
        present = {info[1] for p in shards if (info := split_shard_info(p))}
        missing = [i for i in range(1, expected_count + 1) if i not in present]
        if missing:
            problems.append(Problem(
                f"missing shard(s) {', '.join(f'{i:05d}' for i in missing)} of "
                f"{expected_count:05d}: the model cannot load until they are downloaded",
                fatal=True))
    headers: list[GGUFHeader] = []
    for shard in shards:
        try:
            headers.append(read_header(shard))
        except BadInputError as exc:  # corrupt, or valid but unsupported (version, type)
            problems.append(Problem(exc.reason if len(shards) == 1 else
                                    f"{shard.name}: {exc.reason}", fatal=True))
    if not headers:
        return broken_model(first, "gguf", problems, name=display, files=files)

    main = next((h for h in headers if h.get("split.no", 0) == 0), headers[0])
    tensors = [t for h in headers for t in _tensors(h)]
    for header in headers:
        problems.extend(_truncation_problems(header))
    declared = main.get("split.count")
    if expected_count is None and isinstance(declared, int) and declared > 1:
        problems.append(Problem(f"the header says this is one of {declared} shards, but the "
                                "other shards were not found next to it", fatal=True))
    names = [t.name for t in tensors]
    moe = _moe_info(main, names)
    tokens = main.get("tokenizer.ggml.tokens")
    has_tokenizer = isinstance(main.get("tokenizer.ggml.model"), str) and tokens is not None
    problems.extend(_problems(main, moe, has_tokenizer))
    context = main.arch_field("context_length")
    layers = main.arch_field("block_count")
    return ModelInfo(
        name=display,
        path=first,
        format="gguf",
        files=files,
        architecture=main.architecture,
        parameters=sum(t.n_params for t in tensors),
        file_size=sum(h.file_size for h in headers),
        tensors=tuple(tensors),
        quantization=file_type_label(main) or dominant_weight_type(tensors),
        context_length=context if isinstance(context, int) else None,
        n_layers=layers if isinstance(layers, int) else None,
        moe=moe,
        has_tokenizer=has_tokenizer,
        problems=tuple(problems),
        metadata=_scalar_metadata(main.fields),
    )


def group_gguf_files(paths: Sequence[Path]) -> list[tuple[list[Path], int | None]]:
    """Group GGUF files of one folder into models: split shards together, others alone."""
    groups: dict[tuple[str, int], list[Path]] = {}
    singles: list[tuple[list[Path], int | None]] = []
    for path in sorted(paths):
        info = split_shard_info(path)
        if info is None:
            singles.append(([path], None))
        else:
            base, _, count = info
            groups.setdefault((base, count), []).append(path)
    for (_, count), members in groups.items():
        members.sort(key=lambda p: split_shard_info(p)[1])  # type: ignore[index]
        singles.append((members, count))
    return sorted(singles, key=lambda group: group[0][0].name.lower())
