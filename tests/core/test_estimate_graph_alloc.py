"""The replay of ggml's graph allocator: its free-block rules, and which graphs it builds. Its
sizes against llama.cpp's own report are checked in test_fit_llama_cpp_reports.py."""

from __future__ import annotations

import dataclasses

from app.core.estimate.graph_alloc import (
    Allocator,
    Graph,
    Tensor,
    build_llama_graph,
    llama_compute_buffer,
    reserved_bytes,
)
from app.core.estimate.llama_cpp import compute_buffers, replays_graph
from app.core.estimate.shape import ModelShape


def test_best_fit_takes_the_smallest_hole_and_the_end_only_when_none_fits() -> None:
    alloc = Allocator()
    a, b, c, d = (alloc.alloc(size) for size in (320, 640, 96, 160))
    assert (a, b, c, d) == (0, 320, 960, 1056)
    alloc.free(a, 320)
    alloc.free(c, 96)
    assert alloc.alloc(64) == c  # the 96-byte hole fits best
    assert alloc.alloc(300) == a  # the 320-byte hole
    assert alloc.alloc(400) == 1216  # no hole holds it: the end
    assert alloc.max_size == 1216 + 416  # 400 bytes rounded up to the 32-byte alignment


def test_freed_neighbours_merge_into_one_block() -> None:
    alloc = Allocator()
    offsets = [alloc.alloc(128) for _ in range(4)]
    alloc.alloc(32)  # keeps the four from merging into the end block
    for offset in (offsets[0], offsets[2], offsets[1]):
        alloc.free(offset, 128)
    assert alloc.alloc(384) == 0
    assert alloc.max_size == 4 * 128 + 32


def test_sizes_are_rounded_to_the_alignment() -> None:
    alloc = Allocator()
    assert alloc.alloc(1) == 0
    assert alloc.alloc(1) == 32


def test_in_place_ops_reuse_their_parent_and_others_do_not() -> None:
    weight = Tensor("leaf", (), external=True)
    x = Tensor("leaf", (8, 8), nbytes=256)
    mm = Tensor("mul_mat", (8, 8), (weight, x), 256)
    scaled = Tensor("mul", (8, 8), (mm, weight), 256)  # in place on mm
    copied = Tensor("cont", (8, 8), (scaled,), 256)  # not an in-place op
    copied.output = True
    graph = Graph()
    graph.expand(copied)
    assert [n.op for n in graph.nodes] == ["mul_mat", "mul", "cont"]
    # x, then mm (x is not freed before mm is placed), scaled on mm, copied where x was.
    assert reserved_bytes(graph) == 2 * 256
    assert (x.offset, mm.offset, scaled.offset, copied.offset) == (0, 256, 256, 0)


def test_logits_sit_on_top_of_what_the_last_layer_leaves() -> None:
    # The output's peak is more than the logits and the two rows the output norm needs: the
    # never-used embeddings input stays, and the last layer's freed blocks lie below.
    n_embd, t, vocab = 960, 256, 49152
    graph = build_llama_graph(2, n_embd, 15, 5, 64, 2560, vocab, 256, t)
    assert reserved_bytes(graph) > vocab * t * 4 + 2 * n_embd * t * 4


def shape(**changes: object) -> ModelShape:
    base = ModelShape("llama", 2, 256, 4, (2, 2), 64, 64, 512, 1000, 4096, None, (), 0, 0, False)
    return dataclasses.replace(base, **changes)


def test_the_replay_covers_llama_graphs_only() -> None:
    assert replays_graph(shape())
    assert replays_graph(shape(n_experts=4, n_experts_used=2))
    assert not replays_graph(shape(architecture="gemma2"))
    assert not replays_graph(shape(swa_layers=(True, False), sliding_window=128))
    assert not replays_graph(shape(n_head_kv=(2, 1)))
    assert compute_buffers(shape(architecture="qwen2"), 512, False).replayed == 0
    assert compute_buffers(shape(), 512, False).replayed > 0


def test_replaying_four_or_five_layers_gives_the_whole_models_peak() -> None:
    # The layout alternates layer to layer, so an odd model replays five layers; a wrong parity
    # gives another peak for this narrow-FFN shape with flash attention.
    for n_layer in (30, 31):
        for flash in (False, True):
            for shape_args in ((256, 4, 2, 64, 512, 512, 1024, 512),
                               (512, 8, 1, 64, 1024, 128000, 256, 256)):
                n_embd, n_head, n_head_kv, head_dim, n_ff, vocab, kv, t = shape_args
                whole = reserved_bytes(build_llama_graph(n_layer, n_embd, n_head, n_head_kv,
                                                         head_dim, n_ff, vocab, kv, t, flash))
                assert llama_compute_buffer(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff,
                                            vocab, kv, t, flash) == whole
