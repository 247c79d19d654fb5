"""Memory to load an HF checkpoint with transformers and generate from it.

Weights count at the load dtype, except quantized ones (bitsandbytes, GPTQ/AWQ) which stay at
their stored size with their quantization state. A GGUF read by transformers (when
llama-cpp-python is absent) is dequantized: every tensor at the load dtype, float32 unless
chosen otherwise, while the file's own bytes are read. Layers that do not fit on the GPU go to
the CPU in order, as Modelyard's sequential placement (which uses this estimate) does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.core.errors import OptionError
from app.core.estimate.breakdown import MIB, MemoryBreakdown, RunEstimate
from app.core.estimate.shape import ModelShape, model_shape
from app.core.formats.model_info import ModelInfo, TensorInfo

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
STORED_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
FLOAT_TYPES = frozenset(STORED_DTYPES)
# torch + transformers imported, thread pools and allocator caches warm after a forward pass:
# ~340 MiB RSS on CPU with torch 2.13 and transformers 5.2x (tiny models measured 341-346 MiB
# in all; tests/bench/fit_accuracy.py, tests/core/test_fit_measured.py).
TORCH_OVERHEAD = 340 * MIB
CUDA_CONTEXT = 400 * MIB
HF_LAYER = re.compile(r"\.layers\.(\d+)\.|^blk\.(\d+)\.")
# transformers reads a GGUF with gguf-py and dequantizes it to float32 unless told otherwise.
GGUF_LOAD_DTYPE = "float32"
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def checkpoint_dtype(model: ModelInfo) -> str:
    if model.format == "gguf":
        return GGUF_LOAD_DTYPE
    declared = model.metadata.get("dtype") or model.metadata.get("torch_dtype")
    if isinstance(declared, str) and declared in DTYPE_BYTES:
        return declared
    floats = [t for t in model.tensors if t.type in FLOAT_TYPES]
    if not floats:
        return "float16"
    biggest = max(floats, key=lambda t: t.n_bytes)
    return STORED_DTYPES[biggest.type]


def loaded_bytes(tensor: TensorInfo, dtype_bytes: int, dequantized: bool = False) -> int:
    """Bytes a tensor takes once loaded: floats (and, `dequantized`, every GGUF tensor) at the
    load dtype, quantized ones as stored."""
    if dequantized and tensor.n_params:
        return tensor.n_params * dtype_bytes
    if tensor.type in FLOAT_TYPES:
        return tensor.n_params * dtype_bytes if tensor.n_params else tensor.n_bytes
    return tensor.n_bytes


def layer_bytes(model: ModelInfo, n_layer: int, dtype_bytes: int) -> tuple[int, list[int]]:
    """(bytes outside the decoder layers, bytes of each decoder layer) once loaded."""
    layers = [0] * n_layer
    other = 0
    for tensor in model.tensors:
        match = HF_LAYER.search(tensor.name)
        size = loaded_bytes(tensor, dtype_bytes, dequantized=model.format == "gguf")
        index = int(match.group(1) or match.group(2)) if match else n_layer
        if index < n_layer:
            layers[index] += size
        else:
            other += size
    return other, layers


def hf_kv_cache_bytes(shape: ModelShape, context: int, dtype_bytes: int) -> int:
    total = 0
    for layer in range(shape.n_layer):
        cells = context
        if shape.swa_layers[layer] and shape.sliding_window:
            cells = min(context, shape.sliding_window)
        total += cells * shape.n_head_kv[layer] * (shape.head_dim_k + shape.head_dim_v)
    return total * dtype_bytes


def activation_bytes(shape: ModelShape, context: int, dtype_bytes: int,
                     attention: str = "sdpa", on_cpu: bool = True) -> int:
    """Prefill of a whole context at once: hidden states and MLP intermediates, the attention
    scores where the implementation materialises them, and the last token's logits.

    transformers' default attention is torch's `scaled_dot_product_attention`, whose kernels
    (flash attention on the CPU, flash or memory-efficient on CUDA) work in tiles and never hold
    the [heads, context, context] score matrix; `eager` attention holds it twice at its peak
    (the masked scores and float32 softmax: 8 bytes a score whatever the dtype). On the CPU,
    glibc keeps a layer's freed intermediates on its heap while the next layer's are made (its
    mmap threshold follows the freed blocks up to 32 MiB), so peak RSS holds about two sets.
    Measured, llama 512x8 float32, sdpa: 584/617/656/771/1030 MiB at context
    512/1024/2048/4096/8192 against 589/617/673/785/1009 estimated; eager at 2048: 913-915
    MiB against 929 (tests/bench/fit_accuracy.py). Peak RSS varies from run to run with the
    allocator's arenas: 624-720 MiB over six runs at 2048 on a loaded machine, and 600 MiB with
    glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_), which is the live peak."""
    experts = max(shape.n_experts_used, 1)
    per_token = 4 * shape.n_embd + 2 * shape.n_ff * experts
    intermediates = context * per_token * dtype_bytes * (2 if on_cpu else 1)
    scores = 8 * shape.n_head * context * context if attention == "eager" else 0
    return intermediates + scores + shape.n_vocab * 4


def conversion_transient(model: ModelInfo, load_dtype: str) -> int:
    """Loading casts from the stored dtype: the stored bytes are read (and stay resident, being
    memory-mapped) while the converted copy is built. A GGUF's file stays mapped while each
    tensor is dequantized (a numpy copy, then torch's): the file plus two copies of the largest
    tensor. SmolLM2-135M Q4_1 read by transformers at 512 tokens peaked at 1,121 MiB; the
    estimate says 1,163 MiB (+4 %; the llama.cpp estimate used before: 351 MiB)."""
    if model.format == "gguf":
        largest = max((t.n_params for t in model.tensors), default=0)
        return model.file_size + 2 * largest * DTYPE_BYTES[load_dtype]
    stored = [t for t in model.tensors if t.type in FLOAT_TYPES]
    if all(STORED_DTYPES[t.type] == load_dtype for t in stored):
        return 0
    return sum(t.n_bytes for t in stored)


def work_bytes(model: ModelInfo, shape: ModelShape, context: int, load_dtype: str,
               kv_bytes: int, attention: str = "sdpa", on_cpu: bool = True) -> int:
    """Memory beyond weights and KV cache at the peak, on the CPU or a GPU: either generating
    (activations) or loading (the cast's source bytes, which the KV cache does not yet use)."""
    working = (activation_bytes(shape, context, DTYPE_BYTES[load_dtype], attention, on_cpu)
               if shape.n_embd else 0)
    return max(working, conversion_transient(model, load_dtype) - kv_bytes)


def gpu_work_bytes(model: ModelInfo, context: int, dtype: str = "auto",
                   attention: str = "sdpa") -> int:
    """What `estimate_hf_load` keeps free on a GPU for activations: the loader's placement
    reserves the same."""
    load_dtype = checkpoint_dtype(model) if dtype == "auto" else dtype
    shape = model_shape(model)
    kv = (hf_kv_cache_bytes(shape, context, DTYPE_BYTES[load_dtype]) // shape.n_layer
          * shape.n_layer if shape.n_layer and shape.n_head else 0)
    return work_bytes(model, shape, context, load_dtype, kv, attention, on_cpu=False)


def estimate_hf_load(model: ModelInfo, context: int, dtype: str = "auto",
                     gpu_free: Sequence[int] = (), gpu_layers: int | None = None,
                     attention: str = "sdpa") -> RunEstimate:
    """Memory to load `model` with transformers and generate with `context` tokens.

    With GPUs, `gpu_layers` decoder layers go to the GPU in order (None: as many as fit).
    `attention` is transformers' attention implementation (`sdpa`, its default, or `eager`).
    """
    if context <= 0:
        raise OptionError(f"context length must be positive, not {context}")
    if dtype != "auto" and dtype not in DTYPE_BYTES:
        raise OptionError(f"unknown dtype {dtype!r}", hint="use float32, float16 or bfloat16")
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise OptionError(f"unknown attention implementation {attention!r}",
                          hint="use " + " or ".join(ATTENTION_IMPLEMENTATIONS))
    load_dtype = checkpoint_dtype(model) if dtype == "auto" else dtype
    dtype_bytes = DTYPE_BYTES[load_dtype]
    shape = model_shape(model)
    notes = list(shape.approximate)
    notes.append(f"activations assume the whole context is prefilled at once, with {attention} "
                 "attention")
    if model.format == "gguf":
        notes.append(f"transformers runs this GGUF (llama-cpp-python is not installed), "
                     f"dequantized to {load_dtype}")
    other, layers = layer_bytes(model, shape.n_layer, dtype_bytes)
    kv_per_layer = (hf_kv_cache_bytes(shape, context, dtype_bytes) // shape.n_layer
                    if shape.n_layer and shape.n_head else 0)

    def peak_work(on_cpu: bool) -> int:
        return work_bytes(model, shape, context, load_dtype, kv_per_layer * shape.n_layer,
                          attention, on_cpu)

    n_layer = shape.n_layer
    if not gpu_free:
        ram = MemoryBreakdown(other + sum(layers), kv_per_layer * n_layer, peak_work(True),
                              TORCH_OVERHEAD)
        return RunEstimate("transformers", context, ram, (), 0, n_layer, tuple(notes))
    notes.append("multi-GPU and partial placements are planned layer by layer")
    budget = sum(gpu_free)
    on_gpu = n_layer if gpu_layers is None else max(0, min(gpu_layers, n_layer))
    activations = peak_work(False)
    if gpu_layers is None:
        used = other + activations + CUDA_CONTEXT
        on_gpu = 0
        for size in layers:
            if used + size + kv_per_layer > budget:
                break
            used += size + kv_per_layer
            on_gpu += 1
    gpu_part = MemoryBreakdown(other + sum(layers[:on_gpu]), kv_per_layer * on_gpu,
                               activations, CUDA_CONTEXT) if on_gpu else MemoryBreakdown()
    cpu_weights = sum(layers[on_gpu:]) + (0 if on_gpu else other)
    ram = MemoryBreakdown(cpu_weights, kv_per_layer * (n_layer - on_gpu),
                          0 if on_gpu else peak_work(True), TORCH_OVERHEAD)
    return RunEstimate("transformers", context, ram, (gpu_part,), on_gpu, n_layer, tuple(notes))
