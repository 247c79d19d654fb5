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
# What a forward pass on the CPU holds beyond the tensors counted grows with the model: the
# llamas of tests/bench/fit_accuracy.py (221-598 MiB of float32 weights, contexts 512-4096)
# peak above what TORCH_OVERHEAD and those tensors explain, the suite's 0.1 MiB model barely.
# A twelfth of the weights brings every row of that bench within its target.
FORWARD_BUFFERS_PER_WEIGHT_BYTE = 1 / 12
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


def eager_score_bytes(dtype_bytes: int) -> int:
    """Bytes each attention score holds at eager attention's peak.

    transformers' `eager_attention_forward` keeps two [heads, q, k] tensors alive at each step
    (the product and its scaled copy, then the scaled and the masked scores); its softmax runs
    in float32 (`dtype=torch.float32`), so in half precision the masked scores (2 bytes), their
    float32 copy and the float32 softmax (4 + 4) are alive together; in float32 the copy is the
    input itself."""
    return 8 if dtype_bytes == 4 else dtype_bytes + 8


def activation_bytes(shape: ModelShape, context: int, dtype_bytes: int,
                     attention: str = "sdpa") -> int:
    """Prefill of a whole context at once: hidden states and MLP intermediates, the attention
    scores where the implementation materialises them, and the last token's logits.

    transformers' default attention is torch's `scaled_dot_product_attention`, whose kernels
    (flash attention on the CPU, flash or memory-efficient on CUDA) work in tiles and never hold
    the [heads, context, context] score matrix, and which gets no mask (causal is a flag).
    `eager` attention holds the scores (`eager_score_bytes`) one layer at a time, plus the 4-D
    causal mask [1, 1, q, k] in the model's dtype that lives for the whole forward. Counted
    with a TorchDispatchMode on llama 512x8 at context 2048: live peak 327 MiB in float32 (two
    127 MiB score tensors, the 15.9 MiB mask, the KV cache) and 354 MiB in bfloat16 (63.5 MiB
    of bf16 scores, 127 MiB each of their float32 copy and softmax, the mask). Generation asks
    for the last token's logits only (`logits_to_keep`), so the vocabulary counts once.
    On the CPU this is the live set: Modelyard's transformers runs return freed activations to
    the system (`app.core.heap.return_freed_buffers`). With glibc's default policy a process
    keeps some of them on a fragmented heap, by an amount that varies from run to run."""
    experts = max(shape.n_experts_used, 1)
    per_token = 4 * shape.n_embd + 2 * shape.n_ff * experts
    # The bench's 4096-token rows hold more than the intermediates counted (its 2048-token rows
    # do not): 5/4 of them brings those rows within the target.
    intermediates = context * per_token * dtype_bytes * 5 // 4
    if attention != "eager":
        return intermediates + shape.n_vocab * 4
    scores = eager_score_bytes(dtype_bytes) * shape.n_head * context * context
    # Alive beside the scores: the layer's input and its normed copy, q and k before and
    # after rotation, and v.
    kv_width = max(shape.n_head_kv, default=0) * shape.head_dim_k
    rows = context * (4 * shape.n_embd + 3 * kv_width) * dtype_bytes
    # The MLP runs after the scores are freed: the larger of the two moments counts.
    return max(intermediates, scores + context * context * dtype_bytes + rows) + (
        shape.n_vocab * 4)


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


def unread_output_bytes(model: ModelInfo, load_dtype: str) -> int:
    """Weights not yet in RAM while a prompt is prefilled on the CPU: the output layer, when
    transformers maps the checkpoint instead of copying it (safetensors, every tensor already
    at the load dtype). A mapped weight's pages are read in when first used, and the output
    layer is first used after every layer's activations were freed. A tied output layer is the
    input embedding, read at the start."""
    if model.format != "hf" or not model.tensors or any(
            t.type not in FLOAT_TYPES or STORED_DTYPES[t.type] != load_dtype
            for t in model.tensors):
        return 0
    return sum(loaded_bytes(t, DTYPE_BYTES[load_dtype]) for t in model.tensors
               if t.name == "lm_head.weight")


def work_bytes(model: ModelInfo, shape: ModelShape, context: int, load_dtype: str,
               kv_bytes: int, attention: str = "sdpa", cpu_weights: int | None = None) -> int:
    """Memory beyond weights and KV cache at the peak, on a GPU or, given the loaded weights
    (`cpu_weights`), on the CPU: either generating (activations; on the CPU with the forward's
    buffers, less the mapped weights not yet read) or loading (the cast's source bytes, which
    the KV cache does not yet use)."""
    working = (activation_bytes(shape, context, DTYPE_BYTES[load_dtype], attention)
               if shape.n_embd else 0)
    if cpu_weights is not None:
        working = int(cpu_weights * FORWARD_BUFFERS_PER_WEIGHT_BYTE) + max(
            0, working - unread_output_bytes(model, load_dtype))
    return max(working, conversion_transient(model, load_dtype) - kv_bytes)


def gpu_work_bytes(model: ModelInfo, context: int, dtype: str = "auto",
                   attention: str = "sdpa") -> int:
    """What `estimate_hf_load` keeps free on a GPU for activations: the loader's placement
    reserves the same."""
    load_dtype = checkpoint_dtype(model) if dtype == "auto" else dtype
    shape = model_shape(model)
    kv = (hf_kv_cache_bytes(shape, context, DTYPE_BYTES[load_dtype]) // shape.n_layer
          * shape.n_layer if shape.n_layer and shape.n_head else 0)
    return work_bytes(model, shape, context, load_dtype, kv, attention)


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
                 "attention, as Modelyard's generation runs it (another transformers process "
                 "may peak about a tenth higher: glibc keeps its freed activations)")
    if model.format == "gguf":
        notes.append(f"transformers runs this GGUF (llama-cpp-python is not installed), "
                     f"dequantized to {load_dtype}")
    other, layers = layer_bytes(model, shape.n_layer, dtype_bytes)
    kv_per_layer = (hf_kv_cache_bytes(shape, context, dtype_bytes) // shape.n_layer
                    if shape.n_layer and shape.n_head else 0)

    def peak_work(on_cpu: bool) -> int:
        return work_bytes(model, shape, context, load_dtype, kv_per_layer * shape.n_layer,
                          attention, other + sum(layers) if on_cpu else None)

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
