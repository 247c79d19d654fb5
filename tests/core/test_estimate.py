"""Estimate arithmetic pinned on hand-computed cases."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.errors import OptionError
from app.core.estimate import Machine, estimate_gguf_run, estimate_hf_load, judge, max_context
from app.core.estimate.breakdown import GIB, MIB
from app.core.estimate.llama_cpp import (
    VOCAB_BYTES_PER_TOKEN,
    compute_buffers,
    kv_cache_bytes,
    place_layers,
)
from app.core.estimate.shape import model_shape, swa_pattern
from app.core.formats.scan import inspect_path
from factories import make_gguf, make_split_gguf


def tensor_bytes(model, prefix: str = "") -> int:  # type: ignore[no-untyped-def]
    return sum(t.n_bytes for t in model.tensors if t.name.startswith(prefix))


def test_gqa_kv_cache_of_smollm2(smollm2_gguf: Path) -> None:
    model = inspect_path(smollm2_gguf)
    shape = model_shape(model)
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.head_dim_k) == (30, 576, 9, 64)
    assert shape.n_head_kv == (3,) * 30 and shape.tied_embeddings
    run = estimate_gguf_run(model, 4096)
    # 2 (K and V) x 30 layers x 4096 cells x 3 KV heads x 64 x 2 bytes (f16): llama.cpp
    # reports "KV buffer size = 90.00 MiB" for this model at n_ctx 4096.
    assert run.ram.kv_cache == 2 * 30 * 4096 * 3 * 64 * 2 == 90 * MIB
    assert run.ram.weights == tensor_bytes(model)  # everything on the CPU
    assert run.vram == () and run.gpu_layers == 0 and run.total_layers == 31
    q8 = estimate_gguf_run(model, 4096, cache_type="Q8_0")
    assert q8.ram.kv_cache == 90 * MIB * 34 // 32 // 2


def test_compute_buffer_matches_llama_cpp_reports(smollm2_gguf: Path) -> None:
    shape = model_shape(inspect_path(smollm2_gguf))
    # llama.cpp 0.3.36 reported CPU compute buffers of 98.25 MiB (n_ctx 512, logits dominate)
    # and 326.38 MiB (n_ctx 16384, KQ dominates) for SmolLM2; the GPU reserve is the max.
    small = compute_buffers(shape, 512, flash_attention=False)
    large = compute_buffers(shape, 16384, flash_attention=False)
    assert abs(max(small.layer_gpu, small.logits) / MIB - 98.25) < 1.5
    assert abs(max(large.layer_gpu, large.logits) / MIB - 326.38) < 1.5
    assert compute_buffers(shape, 16384, flash_attention=True).layer_gpu < large.layer_gpu / 5


LLAMA_BUFFER_CHILD = """
import sys
from llama_cpp import Llama
Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_gpu_layers=0, n_threads=1, verbose=True)
"""


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("shape", [(512, 8, 1, 1024, 4000), (384, 6, 2, 1536, 2000)])
def test_compute_buffer_matches_llama_cpp_on_other_shapes(tmp_path: Path,
                                                          shape: tuple[int, ...]) -> None:
    """Shapes the constants were not fitted on (they came from SmolLM2): llama.cpp's own
    report of the compute buffer it reserves, against the estimate."""
    n_embd, n_head, n_head_kv, n_ff, n_vocab = shape
    path = make_gguf(tmp_path / "shape.gguf", n_layers=2, n_embd=n_embd, n_head=n_head,
                     n_head_kv=n_head_kv, n_ff=n_ff, n_vocab=n_vocab, f16=True,
                     context_length=32768)
    model_shape_ = model_shape(inspect_path(path))
    for ctx in (512, 2048):
        result = subprocess.run([sys.executable, "-c", LLAMA_BUFFER_CHILD, str(path), str(ctx)],
                                capture_output=True, text=True, timeout=120)
        match = re.search(r"CPU compute buffer size =\s+([\d.]+) MiB", result.stderr)
        assert match, result.stderr[-2000:]
        reported = float(match.group(1)) * MIB
        buffers = compute_buffers(model_shape_, ctx, flash_attention=False)
        estimate = max(buffers.layer_gpu, buffers.logits)
        assert -0.03 < (estimate - reported) / reported < 0.07, (ctx, estimate, reported)


def test_sliding_window_layers_keep_a_smaller_cache(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "gemma2.gguf", arch="gemma2", n_layers=4, n_head=4,
                     n_head_kv=2, extra_kv={"gemma2.attention.sliding_window": 4096})
    shape = model_shape(inspect_path(path))
    assert shape.swa_layers == (True, False, True, False) == swa_pattern(4, 2)
    head_dim = 64 // 4
    windowed = 4608 * 2 * head_dim * 2 * 2  # n_swa 4096 + n_ubatch 512 cells, padded to 256
    full = 16384 * 2 * head_dim * 2 * 2
    assert kv_cache_bytes(shape, 16384, 0) == windowed
    assert kv_cache_bytes(shape, 16384, 1) == full
    # llama-cpp-python, the runtime Modelyard runs, keeps full-size caches for windowed layers
    assert estimate_gguf_run(inspect_path(path), 16384).ram.kv_cache == 4 * full
    assert estimate_gguf_run(inspect_path(path), 16384,
                             swa_full=False).ram.kv_cache == 2 * windowed + 2 * full
    # a declared pattern overrides the architecture's default
    declared = make_gguf(tmp_path / "declared.gguf", arch="gemma2", n_layers=4, extra_kv={
        "gemma2.attention.sliding_window": 1024,
        "gemma2.attention.sliding_window_pattern": 4})
    assert model_shape(inspect_path(declared)).swa_layers == (True, True, True, False)


def test_moe_weights_per_layer_and_ffn_compute(tmp_path: Path) -> None:
    dense = inspect_path(make_gguf(tmp_path / "dense.gguf", n_ff=512))
    moe = inspect_path(make_gguf(tmp_path / "moe.gguf", n_experts=4, n_ff=512))
    assert model_shape(moe).n_experts == 4 and model_shape(moe).n_experts_used == 2
    run = estimate_gguf_run(moe, 256)
    assert run.ram.weights == tensor_bytes(moe)
    # every expert of a layer is stored (4x the dense FFN) and the router is added
    expert_bytes = tensor_bytes(moe, "blk.0.ffn_gate_exps")
    assert expert_bytes == 4 * tensor_bytes(dense, "blk.0.ffn_gate.")
    shape_moe, shape_dense = model_shape(moe), model_shape(dense)
    # the up, gate and SwiGLU outputs of both experts used, for 256 tokens in f32
    moe_buffers = compute_buffers(shape_moe, 256, False)
    assert moe_buffers.layer_gpu >= 3 * 2 * 512 * 256 * 4
    assert moe_buffers.layer_gpu > compute_buffers(shape_dense, 256, False).layer_gpu


def test_layer_placement_follows_llama_cpp() -> None:
    # n_gpu_layers=1 offloads only the output layer; n_layer+1 offloads everything
    assert place_layers(4, 1, [8 * GIB]).devices == (-1, -1, -1, -1, 0)
    assert place_layers(4, 3, [8 * GIB]).devices == (-1, -1, 0, 0, 0)
    assert place_layers(4, 5, [8 * GIB]).devices == (0, 0, 0, 0, 0)
    assert place_layers(4, 99, [8 * GIB]).devices == (0, 0, 0, 0, 0)
    # two GPUs share layers in proportion to their free memory
    assert place_layers(5, 6, [3 * GIB, 1 * GIB]).devices == (0, 0, 0, 0, 0, 1)
    assert place_layers(4, 5, []).devices == (-1,) * 5
    with pytest.raises(OptionError):
        place_layers(4, -1, [GIB])


def test_tied_embeddings_are_copied_to_the_gpu(tmp_path: Path) -> None:
    tied = inspect_path(make_gguf(tmp_path / "tied.gguf", tied_embeddings=True))
    embd = tensor_bytes(tied, "token_embd")
    shape = model_shape(tied)
    assert shape.tied_embeddings
    full = estimate_gguf_run(tied, 512, gpu_layers=shape.n_layer + 1, gpu_free=[8 * GIB])
    blocks = tensor_bytes(tied, "blk.")
    output = tensor_bytes(tied, "output")
    assert full.ram.weights == embd  # input embeddings always stay on the CPU
    assert full.vram[0].weights == blocks + output + embd
    untied = inspect_path(make_gguf(tmp_path / "untied.gguf"))
    full_untied = estimate_gguf_run(untied, 512, gpu_layers=99, gpu_free=[8 * GIB])
    assert full_untied.vram[0].weights == tensor_bytes(untied) - embd


def test_split_shards_count_every_shard(tmp_path: Path) -> None:
    shards = make_split_gguf(tmp_path, "split", n_shards=3)
    model = inspect_path(shards[0])
    run = estimate_gguf_run(model, 256)
    assert run.ram.weights == sum(t.n_bytes for t in model.tensors) == 6 * 8 * 32 * 4
    assert "embedding length or head count missing" in " ".join(run.approximate)


def test_bnb_4bit_counts_packed_weights_and_state(tiny_models: dict[str, Path]) -> None:
    plain = inspect_path(tiny_models["llama"])
    packed = inspect_path(tiny_models["llama-bnb4"])
    nf4 = [t for t in packed.tensors if t.type == "NF4"]
    aux = [t for t in packed.tensors if t.n_params == 0]
    floats = [t for t in packed.tensors if t.type == "F32"
              and t.n_params and not t.name.endswith(("absmax", "quant_map"))]
    run = estimate_hf_load(packed, 256, dtype="float16")
    expected = (sum(t.n_bytes for t in nf4) + sum(t.n_bytes for t in aux)
                + sum(t.n_params * 2 for t in floats))
    assert run.ram.weights == expected
    assert sum(t.n_bytes for t in nf4) == sum(t.n_params for t in nf4) // 2
    assert estimate_hf_load(plain, 256, dtype="float16").ram.weights == plain.parameters * 2
    # KV cache: 2 x 2 layers x 256 tokens x 2 KV heads x 16 head dim x 2 bytes
    assert run.ram.kv_cache == 2 * 2 * 256 * 2 * 16 * 2


def test_unknown_metadata_gives_an_approximate_estimate(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "odd.gguf", arch="somethingnew")
    run = estimate_gguf_run(inspect_path(path), 512)
    assert run.ram.weights > 0 and run.ram.kv_cache > 0
    assert any("'somethingnew' is unknown" in note for note in run.approximate)
    assert run.to_json()["approximate"] == list(run.approximate)
    known = estimate_gguf_run(inspect_path(make_gguf(tmp_path / "llama.gguf")), 512)
    assert known.approximate == ()
    # a GGUF without head counts cannot size its KV cache: flagged, never a crash
    bare = make_split_gguf(tmp_path, "bare", n_shards=1)[0]
    estimate = estimate_gguf_run(inspect_path(bare), 512)
    assert estimate.ram.kv_cache == 0 and estimate.approximate


def test_a_gguf_is_judged_for_the_runtime_that_will_run_it(
        smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = inspect_path(smollm2_gguf)
    llama = judge(model, Machine.custom(None, 16), 512, runtime="llama.cpp").estimate
    tf = judge(model, Machine.custom(None, 16), 512, runtime="transformers").estimate
    assert llama is not None and tf is not None
    assert (llama.backend, tf.backend) == ("llama.cpp", "transformers")
    # dequantized to float32: 4 bytes a parameter, and the file read alongside
    assert tf.ram.weights == model.parameters * 4 > 5 * model.file_size
    assert tf.ram.total > 3 * llama.ram.total
    assert any("dequantized to float32" in note for note in tf.approximate)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert judge(model, Machine.custom(None, 16), 512).estimate == tf


@pytest.mark.parametrize("call", [
    lambda m: estimate_gguf_run(m, -1),
    lambda m: estimate_gguf_run(m, 0),
    lambda m: judge(m, Machine.custom(0, 8)),
    lambda m: judge(m, Machine.custom(4, -2)),
    lambda m: estimate_gguf_run(m, 512, gpu_layers=-3, gpu_free=[GIB]),
    lambda m: estimate_hf_load(m, 512, dtype="float8"),
    lambda m: estimate_gguf_run(m, 512, cache_type="Q9_9"),
])
def test_nonsense_values_are_rejected(smollm2_gguf: Path, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError):
        call(inspect_path(smollm2_gguf))


def test_verdicts_on_custom_targets(smollm2_gguf: Path) -> None:
    model = inspect_path(smollm2_gguf)
    assert judge(model, Machine.custom(None, 16), 4096).kind == "ram"
    assert judge(model, Machine.custom(24, 16), 4096).kind == "gpu"
    assert judge(model, Machine.custom(None, 0.3), 8192).kind == "none"
    # 1 GiB leaves ~717 MiB usable: CUDA overhead, the output layer, one compute buffer
    # and most (not all) of the 6 MiB-per-layer blocks with their KV cache
    partial = judge(model, Machine.custom(1.0, 16), 8192)
    assert partial.kind == "partial"
    assert partial.estimate is not None and 0 < partial.estimate.gpu_layers < 31
    assert partial.text.startswith(f"fits with {partial.estimate.gpu_layers} of 31 layers")
    more = judge(model, Machine.custom(1.0, 16), 8192, gpu_layers=partial.estimate.gpu_layers + 1)
    assert more.kind == "none"  # one layer more no longer fits: the search found the maximum


def test_max_context_is_the_largest_that_fits(smollm2_gguf: Path) -> None:
    model = inspect_path(smollm2_gguf)
    target = Machine.custom(None, 0.75)
    best = max_context(model, target)
    assert best is not None and 256 <= best < 8192
    assert judge(model, target, best).kind == "ram"
    assert judge(model, target, best + 256).kind == "none"
    assert max_context(model, Machine.custom(None, 64)) == 8192  # capped at the trained context


def test_vocabulary_overhead_scales_with_vocab(smollm2_gguf: Path) -> None:
    run = estimate_gguf_run(inspect_path(smollm2_gguf), 512)
    assert run.ram.overhead > 49152 * VOCAB_BYTES_PER_TOKEN


def test_transformers_attention_scores_only_with_eager(tiny_models: dict[str, Path]) -> None:
    # transformers' default (sdpa) attention works in tiles: activations grow linearly with the
    # context. Eager attention holds n_head x context x context scores, more than once, and the
    # MLP's intermediates are freed by then: the larger moment counts.
    from app.core.estimate.transformers_load import activation_bytes

    model = inspect_path(tiny_models["llama"])
    shape = model_shape(model)
    logits = shape.n_vocab * 4

    def working(context: int, attention: str = "sdpa", dtype_bytes: int = 4) -> int:
        return activation_bytes(shape, context, dtype_bytes, attention) - logits

    assert working(2048) == 2 * working(1024) == 4 * working(512)
    rows = 2048 * (4 * shape.n_embd + 3 * shape.n_head_kv[0] * shape.head_dim_k)
    scores = shape.n_head * 2048 * 2048
    # float32: two score tensors alive at each step, the 4-D float mask, the layer's rows
    assert working(2048, "eager") == 8 * scores + 4 * 2048 * 2048 + 4 * rows > working(2048)
    # half precision: the scores, their float32 copy and the float32 softmax; a bf16 mask
    assert working(2048, "eager", 2) == (2 + 4 + 4) * scores + 2 * 2048 * 2048 + 2 * rows
    # A context short enough that the MLP's moment is the larger one.
    assert working(8, "eager") == working(8) > 8 * shape.n_head * 8 * 8
    # The whole estimate: the eager run needs more than the sdpa one at the same context.
    assert (estimate_hf_load(model, 2048, dtype="float32", attention="eager").ram.total
            > estimate_hf_load(model, 2048, dtype="float32").ram.total)
    with pytest.raises(OptionError, match="attention implementation"):
        estimate_hf_load(model, 512, attention="flash")


def test_a_mapped_output_layer_is_not_in_ram_while_the_prompt_is_prefilled(
        tiny_models: dict[str, Path], tiny_llama_ggufs: dict[str, Path]) -> None:
    # transformers maps a checkpoint loaded at its own dtype; the output layer is read last.
    from app.core.estimate.transformers_load import unread_output_bytes

    model = inspect_path(tiny_models["llama"])
    head = next(t for t in model.tensors if t.name == "lm_head.weight")
    assert unread_output_bytes(model, "float32") == head.n_bytes > 0
    assert unread_output_bytes(model, "bfloat16") == 0  # cast: a copy, in RAM once made
    assert unread_output_bytes(inspect_path(tiny_llama_ggufs["F32"]), "float32") == 0
