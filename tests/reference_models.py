"""Reference quantizations made at test time: small llama-architecture F32 GGUFs with
real-valued weights, quantized by llama.cpp itself.

`llama_cpp.llama_model_quantize` (llama-cpp-python) is the function the `llama-quantize` tool
calls and writes the same bytes, so a test can compare Modelyard's output tensor by tensor with
what llama.cpp writes for any model shape, mix, and per-tensor override.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from factories import make_gguf


@dataclass(frozen=True)
class ReferenceShape:
    """The shape of one generated model (make_gguf's arguments)."""

    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    tied_embeddings: bool = False
    n_experts: int = 0
    arch: str = "llama"


# "tiny-llama": 4 layers, GQA 2, untied output; n_ff 352 is a multiple of 32 but not of 256, so
# every ffn_down falls back from a K-quant to a legacy type.
# "tiny-gqa": 16 layers (the layer-count rules differ: use_more_bits, n_layer / 8 and / 16),
# GQA 4 (Q2_K's attn_v rule), tied embeddings (token_embd takes the output tensor's rule).
# "tiny-moe": 8 stacked experts (the n_expert == 8 rules for attn_v, attn_k, attn_output).
REFERENCE_SHAPES: dict[str, ReferenceShape] = {
    "tiny-llama": ReferenceShape(4, 256, 352, 4, 2, 512),
    "tiny-gqa": ReferenceShape(16, 256, 256, 8, 2, 256, tied_embeddings=True),
    "tiny-moe": ReferenceShape(2, 256, 256, 4, 2, 256, n_experts=8),
}


def real_valued_weights(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Weights shaped like trained ones rather than uniform noise: rows and input channels of
    different scales, heavy-tailed outliers, some rows on a coarse grid (exact ties for the
    quantizers' rounding), one-sided and all-zero stretches, tiny and constant sub-blocks."""
    *lead, cols = (int(d) for d in shape)
    rows = int(np.prod(lead)) if lead else 1
    values = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(0.02)
    values *= np.exp(rng.normal(0, 0.6, (rows, 1))).astype(np.float32)  # per-row scales
    values *= np.exp(rng.normal(0, 0.3, (1, cols))).astype(np.float32)  # per-column scales
    outliers = rng.random((rows, cols)) < 0.003
    values[outliers] *= rng.uniform(5, 25, int(outliers.sum())).astype(np.float32)
    grid_rows = rng.random(rows) < 0.1
    values[grid_rows] = np.round(values[grid_rows] * 256) / 256
    positive = rng.random(rows) < 0.05
    values[positive] = np.abs(values[positive])
    n_sub = cols // 32
    if n_sub:
        sub = values[:, : n_sub * 32].reshape(rows, n_sub, 32)
        pick = rng.random((rows, n_sub))
        sub[pick < 0.01] = 0.0
        sub[(pick >= 0.01) & (pick < 0.015)] *= np.float32(1e-7)
        sub[(pick >= 0.015) & (pick < 0.02)] = np.float32(0.01)
    if rows > 3:
        values[rows // 3] = 0.0
    return values.reshape(*lead, cols)


def make_reference_model(path: Path, shape: ReferenceShape, seed: int = 0) -> Path:
    """An F32 GGUF of `shape` that llama.cpp loads, with real-valued weights."""
    return make_gguf(path, arch=shape.arch, n_layers=shape.n_layers, n_embd=shape.n_embd,
                     n_ff=shape.n_ff, n_vocab=shape.n_vocab, n_experts=shape.n_experts,
                     n_head=shape.n_head, n_head_kv=shape.n_head_kv,
                     tied_embeddings=shape.tied_embeddings, seed=seed,
                     weight_maker=real_valued_weights)


def _ggml_type_code(name: str) -> int:
    return int(gguf.GGMLQuantizationType[name.upper()])


def llama_quantize(source: Path, target: Path, file_type: str, *, pure: bool = False,
                   output_tensor_type: str | None = None,
                   token_embedding_type: str | None = None,
                   tensor_types: Sequence[tuple[str, str]] = ()) -> Path:
    """What `llama-quantize [--pure] [--output-tensor-type T] [--token-embedding-type T]
    [--tensor-type P=T ...] SOURCE TARGET FILE_TYPE` writes (no importance matrix)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(getattr(gguf.LlamaFileType, f"MOSTLY_{file_type.upper()}"))
    params.pure = pure
    params.nthread = 2
    if output_tensor_type:
        params.output_tensor_type = _ggml_type_code(output_tensor_type)
    if token_embedding_type:
        params.token_embedding_type = _ggml_type_code(token_embedding_type)
    keep_alive: list[object] = []
    if tensor_types:
        # A C array of {pattern, type}, ended by a null pattern.
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for slot, (pattern, type_name) in zip(overrides, tensor_types, strict=False):
            encoded = ctypes.c_char_p(pattern.encode())
            keep_alive.append(encoded)
            slot.pattern = encoded.value
            slot.type = _ggml_type_code(type_name)
        params.tt_overrides = overrides
        keep_alive.append(overrides)
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                            ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize failed ({status}) for {source} → {file_type}")
    return target


# The pure types llama-quantize can write and the file type whose default type each is.
PURE_FILE_TYPES = {"Q2_K": "Q2_K", "Q3_K": "Q3_K_S", "Q4_K": "Q4_K_S", "Q5_K": "Q5_K_S",
                   "Q6_K": "Q6_K", "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1",
                   "Q5_0": "Q5_0", "Q5_1": "Q5_1"}
MIXES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")


class ReferenceFiles:
    """Generated models and llama.cpp's quantizations of them, made on first use and kept in
    `root` for the session. Names: MODEL-F32.gguf, MODEL-pure-TYPE.gguf, MODEL-MIX.gguf."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def source(self, model: str) -> Path:
        path = self.root / f"{model}-F32.gguf"
        if not path.exists():
            seed = list(REFERENCE_SHAPES).index(model)
            make_reference_model(path, REFERENCE_SHAPES[model], seed=seed)
        return path

    def pure(self, model: str, qtype: str) -> Path:
        path = self.root / f"{model}-pure-{qtype}.gguf"
        if not path.exists():
            llama_quantize(self.source(model), path, PURE_FILE_TYPES[qtype], pure=True)
        return path

    def mix(self, model: str, mix: str) -> Path:
        path = self.root / f"{model}-{mix}.gguf"
        if not path.exists():
            llama_quantize(self.source(model), path, mix)
        return path

    def custom(self, model: str, file_type: str, label: str, **options: object) -> Path:
        """llama_quantize with per-tensor options (see `llama_quantize`); `label` names the
        file."""
        path = self.root / f"{model}-{file_type}-{label}.gguf"
        if not path.exists():
            llama_quantize(self.source(model), path, file_type, **options)  # type: ignore[arg-type]
        return path

    def standard_folder(self, model: str = "tiny-llama") -> Path:
        """Every pure type and every mix of `model`, all made now."""
        self.source(model)
        for qtype in PURE_FILE_TYPES:
            self.pure(model, qtype)
        for mix in MIXES:
            self.mix(model, mix)
        return self.root


def tensors_of(path: Path) -> dict[str, tuple[str, bytes]]:
    """Each tensor's type and bytes, by name."""
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(path).tensors}


def f32_tensors(path: Path) -> dict[str, np.ndarray]:
    """The F32 tensors of a GGUF by name (numpy, row-major)."""
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
