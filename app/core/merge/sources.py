"""The inputs of a merge: HF safetensors folders (single or sharded), read a piece at a time.

Headers tell every tensor's name, dtype, shape and place before anything is read. A tensor
stored as the merge needs it is read a slice of elements at a time (`StoredSlices`), with
explicit reads into a fresh buffer (no memory map growing the resident set), so a merge holds
chunks, never whole tensors; others (assembled from several, or changed by an adapter) are read
whole. A model given with a LoRA adapter returns its weights with the adapter's update added as
they are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import BadInputError, FormatError, UnsupportedError
from app.core.formats.hf_config import load_json_object
from app.core.formats.safetensors_header import read_safetensors_header
from app.core.merge.canonical import Layout, Unit, layout_of, unit_shape, with_layer
from app.core.merge.config import ModelRef

if TYPE_CHECKING:
    import torch

# torch's names of the float dtypes; torch itself is imported only to read (planning, which the
# window does, stays light).
FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
INDEX_FILE = "model.safetensors.index.json"
TIED_HEADS = (("lm_head.weight", "model.embed_tokens.weight"),)


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]
    file: Path
    offset: int
    n_bytes: int
    ggml: bool = False  # a GGUF tensor: `dtype` is its GGML type, dequantized when read

    @property
    def is_float(self) -> bool:
        return self.ggml or self.dtype in FLOAT_DTYPES


class StoredSlices:
    """A stored float tensor in flat element order, read one slice at a time (`x[s:e]`, on
    `device`, in the stored dtype), so a merge holds only the chunk it computes on however
    large the tensor is; reads of a tensor already read come from the page cache."""

    def __init__(self, tensor: StoredTensor, device: torch.device) -> None:
        import torch

        self.tensor = tensor
        self.device = device
        self.dtype = getattr(torch, FLOAT_DTYPES[tensor.dtype])
        self.itemsize = self.dtype.itemsize
        self.count = tensor.n_bytes // self.itemsize

    def numel(self) -> int:
        return self.count

    def __getitem__(self, index: slice) -> torch.Tensor:
        import torch

        start, stop, step = index.indices(self.count)
        if step != 1:
            raise ValueError("stored tensors are read in contiguous slices")
        stop = max(start, stop)
        raw = torch.empty((stop - start) * self.itemsize, dtype=torch.uint8)
        with open(self.tensor.file, "rb") as handle:
            handle.seek(self.tensor.offset + start * self.itemsize)
            got = handle.readinto(raw.numpy())
        if got != raw.numel():
            raise FormatError("tensor data is truncated", path=self.tensor.file,
                              tensor=self.tensor.name, hint="re-download the file")
        return raw.view(self.dtype).to(self.device)


@dataclass
class ModelSource:
    """One input model: its tensors (from the headers) and its config."""

    ref: ModelRef
    tensors: dict[str, StoredTensor]
    config: dict[str, Any]
    adapter: Any = None  # a LoraAdapter when the model is BASE+ADAPTER
    units: dict[str, tuple[str, Unit]] = field(default_factory=dict)  # key → (tensor, unit)

    aliases: set[str] = field(default_factory=set)  # keys that stand in for a missing tensor

    def __post_init__(self) -> None:
        for tensor in self.tensors.values():
            for row in layout_of(tensor.name, tensor.shape).units:
                for unit in row:
                    self.units.setdefault(unit.key, (tensor.name, unit))
        # A model without an output head ties it to its embeddings: the head is those.
        for head, embedding in TIED_HEADS:
            if head not in self.units and embedding in self.tensors:
                self.units[head] = (embedding, Unit(head))
                self.aliases.add(head)

    @property
    def path(self) -> Path:
        return self.ref.path

    @property
    def label(self) -> str:
        return self.ref.label

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return value if isinstance(value, str) else None

    def layout(self, name: str) -> Layout:
        tensor = self.tensors[name]
        return layout_of(name, tensor.shape)

    def unit_shape(self, key: str) -> tuple[int, ...] | None:
        found = self.units.get(key)
        if found is None:
            return None
        name, unit = found
        return unit_shape(unit, self.tensors[name].shape)

    def unit_dtype(self, key: str) -> str | None:
        found = self.units.get(key)
        return None if found is None else self.tensors[found[0]].dtype

    def read_raw(self, name: str) -> bytes:
        tensor = self.tensors[name]
        with open(tensor.file, "rb") as handle:
            handle.seek(tensor.offset)
            data = handle.read(tensor.n_bytes)
        if len(data) != tensor.n_bytes:
            raise FormatError("tensor data is truncated", path=tensor.file, tensor=name,
                              hint="re-download the file")
        return data

    def streams(self, name: str) -> bool:
        """Whether the tensor can be read a slice at a time: stored as floats, not dequantized,
        and not changed by an adapter."""
        tensor = self.tensors[name]
        return tensor.dtype in FLOAT_DTYPES and not tensor.ggml and not (
            self.adapter is not None and self.adapter.changes(name))

    def stored_as(self, layout: Layout, layer: int | None) -> str | None:
        """The one stored tensor that holds `layout`'s units (at `layer`) in their order, if
        any: then it is read as it is, not assembled."""
        keys = [with_layer(u.key, layer) if layer is not None else u.key
                for row in layout.units for u in row]
        owners = {self.units[k][0] for k in keys}
        if len(owners) != 1:
            return None
        name = next(iter(owners))
        return name if name in self.tensors and self.layout(name).keys() == keys else None

    def slices(self, name: str, device: torch.device) -> StoredSlices:
        return StoredSlices(self.tensors[name], device)

    def read(self, name: str, device: torch.device, float32: bool = True) -> torch.Tensor:
        """One stored tensor on `device`, as float32 or (`float32=False`) as stored; with the
        adapter's update (in float32) when it has one."""
        tensor = self.tensors[name]
        if not tensor.is_float:
            raise UnsupportedError(f"{tensor.dtype} tensors cannot be merged", path=tensor.file,
                                   tensor=name)
        import torch

        values = self.slices(name, device)[:].reshape(tensor.shape)
        if self.adapter is not None and self.adapter.changes(name):
            return self.adapter.apply(name, values.to(torch.float32))
        return values.to(torch.float32) if float32 else values


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = load_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise FormatError("has no weight_map object", path=index)
        files = sorted({str(v) for v in weight_map.values()})
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FormatError(f"shard {missing[0]} named by the index is missing", path=folder,
                              hint="download every shard first")
        return [folder / f for f in files]
    return sorted(folder.glob("*.safetensors"))


def open_source(ref: ModelRef) -> ModelSource:
    """Read the headers of one input; refuse what cannot be merged before anything is read."""
    path = ref.path
    if path.is_file() and path.suffix == ".gguf":
        from app.core.merge.gguf_source import open_gguf_source

        return open_gguf_source(ref, (), describes=True)
    if not path.is_dir():
        raise BadInputError("is not a model folder", path=path)
    files = _weight_files(path)
    if not files:
        raise BadInputError("holds no .safetensors weights", path=path,
                            hint="merges read safetensors folders; pickle weights are never "
                                 "opened")
    tensors: dict[str, StoredTensor] = {}
    for file in files:
        header = read_safetensors_header(file)
        cut = header.truncated_entries()
        if cut:
            raise FormatError(f"truncated: tensor {cut[0].name!r} ends past the end of the "
                              "file", path=file, hint="re-download it")
        for entry in header.entries:
            if entry.name in tensors:
                raise FormatError("the tensor is stored twice", path=file, tensor=entry.name)
            tensors[entry.name] = StoredTensor(entry.name, entry.dtype, entry.shape, file,
                                               entry.begin, entry.n_bytes)
    bnb = [n for n in tensors if ".quant_state." in n or n.endswith((".absmax", ".SCB"))]
    if bnb:
        raise UnsupportedError("is a quantized (bitsandbytes) checkpoint", path=path,
                               tensor=bnb[0], hint="dequantize it to a plain folder first")
    config_path = path / "config.json"
    config = load_json_object(config_path) if config_path.is_file() else {}
    source = ModelSource(ref, tensors, config)
    if ref.adapter is not None:
        from app.core.merge.lora import open_adapter

        source.adapter = open_adapter(ref.adapter, source)
    return source


def dominant_float_dtype(source: ModelSource) -> str:
    """The dtype most of a model's parameters are stored in (F32 when it has none; F16 for a
    quantized GGUF, whose blocks are scaled by F16 numbers)."""
    sizes: dict[str, int] = {}
    for tensor in source.tensors.values():
        if tensor.dtype in FLOAT_DTYPES and tensor.dtype != "F64":
            sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.n_bytes
        elif tensor.ggml:
            sizes["F16"] = sizes.get("F16", 0) + tensor.n_bytes
    return max(sizes, key=lambda d: sizes[d]) if sizes else "F32"


