"""Memory to run a GGUF with llama.cpp: weights per device, KV cache, compute buffers, overhead.

Layer placement follows llama.cpp (src/llama-model.cpp): the input embeddings always stay on the
CPU; the output layer counts as layer n_layer, and `n_gpu_layers = k` offloads layers
n_layer+1-k … n_layer, so the output layer is the first to go to the GPU and k = n_layer + 1
offloads everything. Layers split across GPUs in proportion to their free memory. Each layer's KV
cache lives with the layer. Compute-buffer sizes come from the graph shapes of one micro-batch
(the worst case llama.cpp reserves), calibrated against the sizes llama.cpp itself reports for
several model shapes and context lengths (see `compute_buffers`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from app.core.errors import OptionError, OptionFact
from app.core.estimate.breakdown import MIB, MemoryBreakdown, RunEstimate
from app.core.estimate.graph_alloc import llama_compute_buffer
from app.core.estimate.shape import ModelShape, model_shape
from app.core.formats.model_info import ModelInfo

N_UBATCH = 512
KV_PAD = 256
# Measured with llama-cpp-python 0.3.36 on SmolLM2 (tests/bench/fit_accuracy.py): ~28 MiB for
# the library and its threads, ~370 bytes per vocabulary entry (token strings, merges, maps),
# and ~2 MiB for a context beyond its KV cache and compute buffer (graph metadata, threadpool):
# RSS rose 28.6 MiB at import, then 1.8 MiB more than the KV and output buffers at context
# creation, for generated llama and gemma2 models at n_ctx 512 and 2048.
RUNTIME_OVERHEAD = 30 * MIB
VOCAB_BYTES_PER_TOKEN = 384
# A CUDA context plus cuBLAS workspaces; not measured here (no GPU on the build machines).
GPU_OVERHEAD = 400 * MIB
BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Placement:
    """Which device each offloadable layer (blocks 0..n-1, then output) runs on; -1 = CPU."""

    devices: tuple[int, ...]

    @property
    def output_device(self) -> int:
        return self.devices[-1]

    def block_device(self, layer: int) -> int:
        return self.devices[layer]


def place_layers(n_layer: int, gpu_layers: int, gpu_free: Sequence[int]) -> Placement:
    """llama.cpp's assignment of blocks and the output layer to devices."""
    if gpu_layers < 0:
        raise OptionError(f"the GPU layer count must be 0 or more, not {gpu_layers}",
                          option=OptionFact("gpu_layers"))
    if not gpu_free:
        return Placement((-1,) * (n_layer + 1))
    offloaded = min(gpu_layers, n_layer + 1)
    first_gpu = max(n_layer + 1 - gpu_layers, 0)
    total_free = sum(gpu_free) or len(gpu_free)
    shares = [(f or 1) / total_free for f in gpu_free]
    bounds, running = [], 0.0
    for share in shares:
        running += share
        bounds.append(running)
    devices = []
    for layer in range(n_layer + 1):
        if layer < first_gpu or layer - first_gpu >= offloaded:
            devices.append(-1)
            continue
        position = (layer - first_gpu) / offloaded
        devices.append(next((i for i, b in enumerate(bounds) if position < b), len(bounds) - 1))
    return Placement(tuple(devices))


def layer_weight_bytes(model: ModelInfo, n_layer: int) -> tuple[int, list[int], int]:
    """(input bytes, bytes of each block, output bytes) from the file's tensor sizes."""
    blocks = [0] * n_layer
    input_bytes = output_bytes = 0
    for tensor in model.tensors:
        match = BLOCK_TENSOR.match(tensor.name)
        if match and int(match.group(1)) < n_layer:
            blocks[int(match.group(1))] += tensor.n_bytes
        elif tensor.name.startswith("output"):
            output_bytes += tensor.n_bytes
        else:
            input_bytes += tensor.n_bytes
    return input_bytes, blocks, output_bytes


def cache_block(cache_type: str) -> tuple[int, int]:
    """(values per block, bytes per block) of a KV cache type; OptionError if unknown."""
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType[cache_type.upper()]]
    except KeyError:
        raise OptionError(f"unknown KV cache type {cache_type!r}",
                          hint="use F16, BF16, F32, Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1") from None


def kv_cache_bytes(shape: ModelShape, context: int, layer: int, cache_type: str = "F16",
                   n_ubatch: int = N_UBATCH, swa_full: bool = False) -> int:
    """One layer's K and V cells: 2 · n_ctx · n_head_kv · head_dim · bytes, per layer.

    `swa_full`: windowed layers keep a full-size cache too, as llama-cpp-python does (its
    context defaults to llama.cpp's `swa_full = true`; it logs "using full-size SWA cache")."""
    block, size = cache_block(cache_type)
    bytes_per_value = size / block
    cells = padded_context(context)
    if shape.swa_layers and shape.swa_layers[layer] and shape.sliding_window and not swa_full:
        # llama_kv_cache_iswa: a windowed layer keeps n_swa + n_ubatch cells, padded to 256.
        cells = min(cells, _pad(shape.sliding_window + n_ubatch))
    heads = shape.n_head_kv[layer]
    return int(cells * heads * (shape.head_dim_k + shape.head_dim_v) * bytes_per_value)


def _pad(value: int) -> int:
    return (value + KV_PAD - 1) // KV_PAD * KV_PAD


def padded_context(context: int) -> int:
    return _pad(context)


@dataclass(frozen=True)
class ComputeBuffers:
    layer_gpu: int  # what a GPU reserves (cudaMalloc) for the attention/FFN graph
    layer_cpu: int  # what the CPU touches for the same graph, conversion work buffer included
    logits: int  # the output layer's graph with logits for a whole micro-batch (GPU reserve)
    inputs: int  # the CPU's buffer when every layer is on a GPU: the input embeddings' rows
    # The whole graph's buffer from a replay of ggml's allocator (`graph_alloc`), where the
    # graph is one the replay builds; 0 otherwise.
    replayed: int = 0

    @property
    def reserved(self) -> int:
        """The one buffer llama.cpp reserves when the whole graph runs on one device."""
        return self.replayed or max(self.layer_gpu, self.logits)


def replays_graph(shape: ModelShape) -> bool:
    """Whether `graph_alloc` builds this model's graph: llama's blocks (dense or experts), one
    KV cache."""
    return (shape.architecture == "llama" and not any(shape.swa_layers)
            and shape.head_dim_k == shape.head_dim_v and len(set(shape.n_head_kv)) == 1
            and shape.n_layer > 0)


def hadamard_sizes(shape: ModelShape, cache_type: str) -> tuple[int, int]:
    """The Hadamard matrices a quantized KV cache rotates K and V by (llama_kv_cache's
    attn_rot_k/attn_rot_v), 0 where it does not: for heads a multiple of 64 wide, K's is the
    largest power of two dividing the head size, V's 64."""
    if cache_block(cache_type)[0] == 1 or not shape.head_dim_k:  # a float type
        return 0, 0
    k_rot = 0
    if shape.head_dim_k % 64 == 0:
        k_rot = 64
        while shape.head_dim_k % (2 * k_rot) == 0:
            k_rot *= 2
    return k_rot, 64 if shape.head_dim_v and shape.head_dim_v % 64 == 0 else 0


def compute_buffers(shape: ModelShape, context: int, flash_attention: bool,
                    n_ubatch: int = N_UBATCH, cache_type: str = "F16") -> ComputeBuffers:
    """Worst-case compute buffers for one micro-batch attending to a full context.

    llama.cpp reserves the graph of a full micro-batch (n_ubatch = min(512, n_ctx) tokens, all
    of them outputs) attending to every KV cell, and ggml's graph allocator sizes the buffer by
    the largest set of tensors alive at once. That is the largest of three moments:
    - attention without flash attention: the graph's inputs, which stay allocated until the last
      layer has used them (the f32 KQ mask, n_kv x n_ubatch, and the int64 row indices that
      scatter each value of V into its transposed cache), the f32 scores of every head
      (n_head x n_kv x n_ubatch; the softmax runs in place) and five hidden-state rows;
    - the FFN: the inputs, the up, gate and SwiGLU outputs (per expert used), and four
      hidden-state rows, one of which is a gap the allocator leaves between them;
    - the output: f32 logits for the whole micro-batch and two hidden-state rows (the inputs
      are freed by then).
    Checked against the sizes llama.cpp 0.3.36 reports (tests/bench/fit_accuracy.py) for hidden
    sizes 512-4096, 1-8 query heads per KV head, experts, vocabularies of 2k-128k and contexts
    256-8192, flash attention off: 14 shapes the terms were read from within +4.2/-3.9 % at 6
    contexts each, 6 other shapes within +2.7/-6.9 %. The misses are where the allocator puts
    the logits above a gap the last layer left (up to 4 hidden-state rows) or, with flash
    attention on, where the FFN is as narrow as the hidden state (over by half).
    For the graph `graph_alloc` rebuilds (llama's blocks, dense or experts) the whole reserve
    comes from a replay of the allocator instead (`replayed`): it equals llama.cpp's report to
    0.2 % for 15 shapes at contexts 256-8192, flash attention on and off; the terms stay for
    split placements and the other graphs (other architectures, sliding windows)."""
    kv = padded_context(context)
    ubatch = min(context, n_ubatch)
    f32, f16, i64 = 4, 2, 8
    # Sliding-window models keep a second KV cache with its own mask and indices
    # (llama_kv_cache_iswa). A cache's inputs are freed after the last layer that reads them,
    # so a layer's FFN sees only those of the caches later layers use.
    kinds = shape.swa_layers or (False,) * shape.n_layer
    caches = len(set(kinds)) or 1
    # The first layer's FFN is the worst case: every cache a later layer reads is still there.
    caches_later = len(set(kinds[1:]))
    row = shape.n_embd * ubatch * f32
    experts = max(shape.n_experts_used, 1)
    ffn_row = shape.n_ff * experts * ubatch * f32
    if flash_attention:
        # The mask is f16 and V is stored untransposed (one index per token, negligible).
        cache_inputs = caches * kv * ubatch * f16
        attention = cache_inputs + 8 * row
        conversion = 0
        ffn = cache_inputs // caches * caches_later + 3 * ffn_row + 4 * row
    else:
        v_width = max(shape.n_head_kv, default=0) * shape.head_dim_v
        cache_inputs = caches * (kv * ubatch * f32 + v_width * ubatch * i64)
        scores = shape.n_head * kv * ubatch * f32
        attention = cache_inputs + scores + 5 * row
        # On the CPU the softmax is converted to f16 for the V product (ggml's work buffer).
        conversion = shape.n_head * kv * ubatch * f16
        # The gap closes when the freed score block holds two up projections; when it holds
        # one, the allocator reuses it in some layouts and not others (counted as half a row;
        # an MoE's router tensors take that block first).
        gap = (0 if scores >= 2 * ffn_row
               else row // 2 if scores >= ffn_row and not shape.n_experts else row)
        ffn = cache_inputs // caches * caches_later + 3 * ffn_row + 3 * row + gap
    # The CPU converts the down projection's input to the weights' dot-product type (f16 for
    # F16 weights, about a byte for Q8_0/Q8_1) in its work buffer, outside this one.
    ffn_conversion = shape.n_ff * experts * ubatch * f16
    logits = shape.n_vocab * ubatch * f32 + 2 * row
    layer = max(attention, ffn)
    replayed = 0
    if replays_graph(shape):
        # Where the logits land depends on the gaps the last layer left, which only a replay of
        # the allocator knows (the terms above miss by up to 4 hidden-state rows there).
        replayed = llama_compute_buffer(shape.n_layer, shape.n_embd, shape.n_head,
                                        shape.n_head_kv[0], shape.head_dim_k, shape.n_ff,
                                        shape.n_vocab, kv, ubatch, flash_attention,
                                        shape.n_experts, shape.n_experts_used,
                                        *hadamard_sizes(shape, cache_type))
    return ComputeBuffers(layer, max(attention + conversion, ffn + ffn_conversion), logits,
                          2 * row, replayed)


def runtime_overhead(shape: ModelShape) -> int:
    """llama.cpp's own RAM: code and threads, the vocabulary's tables, context state."""
    return RUNTIME_OVERHEAD + VOCAB_BYTES_PER_TOKEN * shape.n_vocab


# What Modelyard's llama.cpp runtime (llama-cpp-python, its context defaults) allocates.
LLAMA_CPP_PYTHON_SWA_FULL = True


def estimate_gguf_run(model: ModelInfo, context: int, gpu_layers: int = 0,
                      gpu_free: Sequence[int] = (), cache_type: str = "F16",
                      flash_attention: bool = False,
                      swa_full: bool = LLAMA_CPP_PYTHON_SWA_FULL) -> RunEstimate:
    """Memory to run `model` with llama.cpp at `context` tokens and `gpu_layers` offloaded.

    Flash attention and the KV cache type are the runtime's settings (llama-cpp-python: off,
    F16); `swa_full` False is the llama.cpp tools' smaller cache for windowed layers."""
    if context <= 0:
        raise OptionError(f"context length must be positive, not {context}")
    shape = model_shape(model)
    notes = list(shape.approximate)
    if model.architecture is None:
        notes.append("unknown architecture: only the weights are counted reliably")
    if shape.n_experts:
        notes.append("mixture of experts: FFN compute buffer scaled by experts per token")
    n_layer = shape.n_layer
    placement = place_layers(n_layer, gpu_layers if gpu_free else 0, gpu_free)
    input_bytes, blocks, output_bytes = layer_weight_bytes(model, n_layer)
    n_gpus = len(gpu_free)
    weights = [0] * n_gpus
    kv = [0] * n_gpus
    ram_weights = input_bytes
    ram_kv = 0
    for layer in range(n_layer):
        device = placement.block_device(layer)
        layer_kv = (kv_cache_bytes(shape, context, layer, cache_type, swa_full=swa_full)
                    if shape.n_head else 0)
        if device < 0:
            ram_weights += blocks[layer]
            ram_kv += layer_kv
        else:
            weights[device] += blocks[layer]
            kv[device] += layer_kv
    output_device = placement.output_device
    if output_device < 0:
        ram_weights += output_bytes
    else:
        weights[output_device] += output_bytes
        if shape.tied_embeddings:
            # No output.weight: llama.cpp copies token_embd to the output layer's device.
            weights[output_device] += next(
                (t.n_bytes for t in model.tensors if t.name == "token_embd.weight"), 0)

    buffers = (compute_buffers(shape, context, flash_attention, cache_type=cache_type)
               if shape.n_embd else None)
    cpu_compute = 0
    if buffers is not None:
        # RAM counts touched pages: generation asks for one token's logits, so the CPU never
        # fills the output graph's whole-batch buffer; a GPU reserves it all up front.
        cpu_compute = buffers.inputs
        if any(placement.block_device(i) < 0 for i in range(n_layer)):
            cpu_compute = max(cpu_compute, buffers.layer_cpu)
    ram = MemoryBreakdown(ram_weights, ram_kv, cpu_compute, runtime_overhead(shape))
    vram = []
    for gpu in range(n_gpus):
        parts = [0]
        if buffers is not None and any(placement.block_device(i) == gpu
                                       for i in range(n_layer)):
            parts.append(buffers.layer_gpu)
        if buffers is not None and output_device == gpu:
            parts.append(buffers.logits)
        # One device running the whole graph reserves one buffer for all of it.
        reserve = buffers.reserved if buffers is not None and len(parts) == 3 else max(parts)
        used = weights[gpu] or kv[gpu] or reserve
        vram.append(MemoryBreakdown(weights[gpu], kv[gpu], reserve,
                                    GPU_OVERHEAD if used else 0))
    if any(v.total for v in vram):
        notes.append("CUDA context and cuBLAS workspace sizes are typical values, not measured")
    offloaded = sum(1 for d in placement.devices if d >= 0)
    return RunEstimate("llama.cpp", context, ram, tuple(vram), offloaded,
                       shape.n_layers_offloadable, tuple(dict.fromkeys(notes)))
