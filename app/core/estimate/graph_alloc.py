"""A size-only replay of ggml's graph allocator on the graph llama.cpp reserves for a llama.

llama.cpp sizes its compute buffer by allocating the worst-case graph (a full micro-batch, every
token an output, attending to every KV cell) with ggml-alloc and keeping the highest offset any
tensor reached. Where a tensor lands depends on what was freed before it, so the peak is not
always the largest live set: the logits, allocated last, go on top of whatever the last layer
left where it left it. This module rebuilds the tensors of `build_llama` (dense or expert FFN,
flash attention on or off, the whole graph on one backend; weights and KV cache live in their
own buffers) in ggml's node order (a depth-first walk of each expanded tensor's sources) and
replays ggml-alloc.c: leafs first, then nodes in order, reusing a parent's block for in-place
ops, freeing a tensor after its last consumer, best-fit among the free blocks with the block at
the end taken only when nothing else fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

ALIGNMENT = 32  # the CPU buffer type's TENSOR_ALIGNMENT
# ggml_op_can_inplace: the ops of this graph that may take over their parent's block.
INPLACE_OPS = frozenset({"add", "mul", "div", "rms_norm", "rope", "soft_max"})


@dataclass(eq=False)
class Tensor:
    op: str  # "leaf" for an input or weight, "view" for reshape/permute/view
    shape: tuple[int, ...]
    srcs: tuple[Tensor, ...] = ()
    nbytes: int = 0
    external: bool = False  # weights and KV cache: not in the compute buffer
    view_src: Tensor | None = None
    output: bool = False
    # The allocator's bookkeeping (ggml-alloc.c's hash_node).
    n_children: int = 0
    n_views: int = 0
    offset: int = -1
    allocated: bool = False


def _aligned(size: int) -> int:
    return (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class Allocator:
    """ggml_dyn_tallocr for one chunk: free blocks sorted by offset, the last one unbounded."""

    def __init__(self) -> None:
        self.blocks: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def alloc(self, size: int) -> int:
        size = _aligned(size)
        best, best_size = -1, None
        for i, (_, block_size) in enumerate(self.blocks[:-1]):
            if block_size >= size and (best_size is None or block_size <= best_size):
                best, best_size = i, block_size
        if best < 0:
            best = len(self.blocks) - 1
        block = self.blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        size = _aligned(size)
        for i, block in enumerate(self.blocks):
            if block[0] + block[1] == offset:
                block[1] += size
                if i + 1 < len(self.blocks) and block[0] + block[1] == self.blocks[i + 1][0]:
                    block[1] += self.blocks[i + 1][1]
                    del self.blocks[i + 1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if i > 0 and self.blocks[i - 1][0] + self.blocks[i - 1][1] == block[0]:
                    self.blocks[i - 1][1] += block[1]
                    del self.blocks[i]
                return
        position = next((i for i, b in enumerate(self.blocks) if b[0] >= offset),
                        len(self.blocks))
        self.blocks.insert(position, [offset, size])


class Graph:
    """ggml_build_forward_expand's node and leaf order."""

    def __init__(self) -> None:
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        self._seen: set[int] = set()

    def expand(self, tensor: Tensor) -> None:
        stack: list[tuple[Tensor, int]] = [(tensor, 0)]
        while stack:
            node, next_src = stack.pop()
            if next_src == 0:
                if id(node) in self._seen:
                    continue
                self._seen.add(id(node))
            if next_src < len(node.srcs):
                stack.append((node, next_src + 1))
                stack.append((node.srcs[next_src], 0))
                continue
            (self.leafs if node.op == "leaf" else self.nodes).append(node)


def _new(op: str, shape: tuple[int, ...], *srcs: Tensor, size: int = 4) -> Tensor:
    n = 1
    for d in shape:
        n *= d
    return Tensor(op, shape, srcs, n * size)


def _view(parent: Tensor, shape: tuple[int, ...] = ()) -> Tensor:
    """A reshape, permute or view: no memory of its own, and it keeps its root alive."""
    root = parent.view_src or parent
    return Tensor("view", shape, (parent,), 0, root.external, root)


def _weight() -> Tensor:
    return Tensor("leaf", (), external=True)


def _input(shape: tuple[int, ...], size: int) -> Tensor:
    return _new("leaf", shape, size=size)


def build_llama_graph(n_layer: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int,
                      n_ff: int, n_vocab: int, n_kv: int, n_tokens: int,
                      flash_attention: bool = False, n_expert: int = 0,
                      n_expert_used: int = 0, k_rotation: int = 0,
                      v_rotation: int = 0) -> Graph:
    """The tensors build_llama creates for one micro-batch, expanded as llama.cpp expands them.

    With flash attention the mask is f16, V is stored untransposed (one row index per token),
    and one fused op replaces the scores, softmax and product. A quantized KV cache rotates
    what it stores (llama_mul_mat_hadamard): `k_rotation` (q and k) and `v_rotation` (v, and
    the attention's output back) are the sizes of those Hadamard matrices, 0 for none."""
    graph = Graph()
    t = n_tokens
    kv_width = n_head_kv * head_dim
    tokens = _input((t,), 4)
    positions = _input((t,), 4)
    k_idxs = _input((t,), 8)
    v_idxs = _input((t if flash_attention else t * kv_width,), 8)
    mask = _input((n_kv, t), 2 if flash_attention else 4)
    out_ids = _input((t,), 4)
    cache = Tensor("leaf", (), external=True)
    k_rot = _input((k_rotation, k_rotation), 4) if k_rotation else None
    v_rot = _input((v_rotation, v_rotation), 4) if v_rotation else None
    inp = _new("get_rows", (n_embd, t), _weight(), tokens)
    # build_inp_embd expands both input paths (token ids and ready embeddings) and selects one;
    # the unused embeddings input is a leaf nothing consumes, so it is never freed.
    graph.expand(inp)
    graph.expand(_input((n_embd, t), 4))
    for layer in range(n_layer):
        norm = _new("mul", (n_embd, t), _new("rms_norm", (n_embd, t), inp), _weight())
        q = _new("mul_mat", (n_head * head_dim, t), _weight(), norm)
        k = _new("mul_mat", (kv_width, t), _weight(), norm)
        v = _new("mul_mat", (kv_width, t), _weight(), norm)
        q = _new("rope", (head_dim, n_head, t), _view(q, (head_dim, n_head, t)),
                 positions)
        v = _view(v, (head_dim, n_head_kv, t))
        k = _new("rope", (head_dim, n_head_kv, t), _view(k, (head_dim, n_head_kv, t)),
                 positions)
        if k_rot is not None:
            q = _rotated(q, k_rot, (head_dim, n_head, t))
            k = _rotated(k, k_rot, (head_dim, n_head_kv, t))
        if v_rot is not None:
            v = _rotated(v, v_rot, (head_dim, n_head_kv, t))
        graph.expand(q)
        graph.expand(v)
        graph.expand(k)
        k_cache = _view(cache, ())
        graph.expand(Tensor("set_rows", (), (k_cache, _view(k, (kv_width, t)), k_idxs),
                            external=True, view_src=cache))
        v_flat = _view(_view(v, (kv_width, t)), (1, kv_width * t))
        graph.expand(Tensor("set_rows", (), (_view(cache, ()), v_flat, v_idxs),
                            external=True, view_src=cache))
        q_heads = _view(_view(q, (head_dim, n_head, t)), (head_dim, t, n_head))
        k_heads = _view(_view(cache, ()), ())
        v_heads = _view(_view(cache, ()), ())
        if flash_attention:
            attn = _view(_new("flash_attn_ext", (head_dim, n_head, t), q_heads, k_heads,
                              v_heads, mask), (head_dim * n_head, t))
        else:
            scores = _new("mul_mat", (n_kv, t, n_head), k_heads, q_heads)
            scores = _new("soft_max", (n_kv, t, n_head), scores, mask)
            kqv = _new("mul_mat", (head_dim, t, n_head), v_heads, scores)
            attn = _new("cont", (head_dim * n_head, t), _view(kqv, (head_dim, n_head, t)))
        graph.expand(attn)
        if v_rot is not None:
            attn = _rotated(attn, v_rot, (head_dim * n_head, t))
        attn = _new("mul_mat", (n_embd, t), _weight(), attn)
        residual = inp
        if layer == n_layer - 1:
            attn = _new("get_rows", (n_embd, t), attn, out_ids)
            residual = _new("get_rows", (n_embd, t), residual, out_ids)
        ffn_inp = _new("add", (n_embd, t), attn, residual)
        norm = _new("mul", (n_embd, t), _new("rms_norm", (n_embd, t), ffn_inp), _weight())
        if n_expert:
            down = _moe_ffn(graph, norm, n_embd, n_ff, n_expert, n_expert_used, t)
        else:
            up = _new("mul_mat", (n_ff, t), _weight(), norm)
            gate = _new("mul_mat", (n_ff, t), _weight(), norm)
            down = _new("mul_mat", (n_embd, t), _weight(), _new("glu", (n_ff, t), gate, up))
        inp = _new("add", (n_embd, t), down, ffn_inp)
    embd = _new("mul", (n_embd, t), _new("rms_norm", (n_embd, t), inp), _weight())
    logits = _new("mul_mat", (n_vocab, t), _weight(), embd)
    embd.output = logits.output = True
    graph.expand(logits)
    return graph


def _rotated(x: Tensor, rot: Tensor, shape: tuple[int, ...]) -> Tensor:
    """llama_mul_mat_hadamard on a contiguous tensor: rows of the matrix's size, multiplied by
    it into a new f32 tensor, reshaped back."""
    return _view(_new("mul_mat", shape, rot, _view(x)), shape)


def _moe_ffn(graph: Graph, norm: Tensor, n_embd: int, n_ff: int, n_expert: int, used: int,
             t: int) -> Tensor:
    """build_moe_ffn as llama builds it: softmax routing, top-k, weights normalised, the
    experts' up/gate/down as indexed products, then one view per expert used added up."""
    probs = _new("soft_max", (n_expert, t), _new("mul_mat", (n_expert, t), _weight(), norm))
    selected = _view(_new("argsort", (n_expert, t), probs), (used, t))
    weights = _view(_new("get_rows", (1, used, t), _view(probs, (1, n_expert, t)), selected),
                    (used, t))
    total = _new("clamp", (1, t), _new("sum_rows", (1, t), weights))
    weights = _view(_new("div", (used, t), weights, total), (1, used, t))
    graph.expand(weights)
    rows = _view(norm, (n_embd, 1, t))
    up = _new("mul_mat_id", (n_ff, used, t), _weight(), rows, selected)
    gate = _new("mul_mat_id", (n_ff, used, t), _weight(), rows, selected)
    experts = _new("mul_mat_id", (n_embd, used, t), _weight(),
                   _new("glu", (n_ff, used, t), gate, up), selected)
    experts = _new("mul", (n_embd, used, t), experts, weights)
    graph.expand(experts)
    views = [_view(experts, (n_embd, t)) for _ in range(used)]
    for view in views:
        graph.expand(view)
    out = views[0]
    for view in views[1:]:
        out = _new("add", (n_embd, t), out, view)
        graph.expand(out)
    if used == 1:
        out = _new("cont", (n_embd, t), out)
    return out


def _allocate(allocator: Allocator, node: Tensor) -> None:
    if node.allocated or node.offset >= 0 or node.external or node.op == "view":
        return
    if node.op in INPLACE_OPS:
        # Views are never the allocator's own tensors, so only a plain parent is taken over.
        for parent in node.srcs:
            if (parent.allocated and not parent.output and parent.shape == node.shape
                    and parent.nbytes == node.nbytes
                    and parent.n_children == 1 and parent.n_views == 0):
                node.offset, node.allocated = parent.offset, True
                parent.allocated = False
                return
    node.offset = allocator.alloc(node.nbytes)
    node.allocated = True


def _free(allocator: Allocator, tensor: Tensor) -> None:
    if tensor.output:
        return
    allocator.free(tensor.offset, tensor.nbytes)
    tensor.allocated = False


def reserved_bytes(graph: Graph) -> int:
    """The buffer size ggml-alloc reserves for `graph`: the highest offset a tensor reached."""
    allocator = Allocator()
    for leaf in graph.leafs:
        _allocate(allocator, leaf)
    for node in graph.nodes:
        if node.op == "view" and node.view_src is not None:
            node.view_src.n_views += 1
        for src in node.srcs:
            src.n_children += 1
    for node in graph.nodes:
        for parent in node.srcs:
            _allocate(allocator, parent)
        _allocate(allocator, node)
        for parent in node.srcs:
            parent.n_children -= 1
            if parent.n_children or parent.n_views:
                continue
            if parent.op == "view" and parent.view_src is not None:
                root = parent.view_src
                root.n_views -= 1
                if not root.n_views and not root.n_children and root.allocated:
                    _free(allocator, root)
            elif parent.allocated:
                _free(allocator, parent)
    return allocator.max_size


@lru_cache(maxsize=256)
def llama_compute_buffer(n_layer: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int,
                         n_ff: int, n_vocab: int, n_kv: int, n_tokens: int,
                         flash_attention: bool, n_expert: int = 0,
                         n_expert_used: int = 0, k_rotation: int = 0,
                         v_rotation: int = 0) -> int:
    """The compute buffer llama.cpp reserves for a dense llama-architecture model: the
    replayed allocation of `build_llama_graph`.

    The middle layers leave the free blocks as they found them two layers before (the layout
    alternates), so four or five layers, with the model's parity, reach the same peak as all of
    them: checked for 48 shapes, 4 contexts, flash attention on and off, at 6-14 layers."""
    if n_layer > 5:
        n_layer = 4 + n_layer % 2
    return reserved_bytes(build_llama_graph(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff,
                                            n_vocab, n_kv, n_tokens, flash_attention,
                                            n_expert, n_expert_used, k_rotation, v_rotation))
