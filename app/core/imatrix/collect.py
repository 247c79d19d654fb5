"""Forward hooks that sum the squared inputs of every weight matrix of a transformers model,
per input column, under the matrix's GGUF tensor name (what llama.cpp's `llama-imatrix`
collects from its MUL_MAT and MUL_MAT_ID operations).

- Every `nn.Linear` inside a transformer block: its input rows, counted once per token.
- A block's experts held as 3-D parameters (`gate_up_proj` [n_expert, 2 * ff, hidden],
  `down_proj` [n_expert, hidden, ff], called as `experts(hidden, top_k_index, top_k_weights)`,
  as transformers' Mixtral and Qwen2-MoE are): for each expert, the rows routed to it (for
  `ffn_gate_exps` and `ffn_up_exps`) and the activations its down projection receives (for
  `ffn_down_exps`), counted per routed token, one row of sums and one count per expert.

Like `llama-imatrix` by default, only matrices of the blocks (`blk.N.*`) are collected.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gguf import get_tensor_name_map

from app.core.convert import hf_arch
from app.core.convert.hf_names import map_hf_name
from app.core.errors import UnsupportedError

_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
EXPERT_TENSORS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


class _Stats:
    """Sums [n_mat, ne0] and counts [n_mat] of one GGUF tensor, on the model's device."""

    def __init__(self, n_mat: int, n_columns: int, device: torch.device) -> None:
        self.sums = torch.zeros((n_mat, n_columns), dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_mat, dtype=torch.int64, device=device)

    def add(self, rows: torch.Tensor, mat: int = 0) -> None:
        values = rows.detach().reshape(-1, rows.shape[-1]).to(torch.float64)
        self.sums[mat] += (values * values).sum(dim=0)
        self.counts[mat] += values.shape[0]


class ActivationCollector:
    """Hooks on `model`; `stats()` gives what was collected, by GGUF tensor name."""

    def __init__(self, model: Any, model_type: str, n_layer: int) -> None:
        spec = hf_arch.arch_spec(model_type)
        tensor_map = get_tensor_name_map(spec.gguf_arch, n_layer)
        self._stats: dict[str, _Stats] = {}
        self._handles: list[Any] = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                mapped = map_hf_name(f"{name}.weight", tensor_map, spec)
                if mapped is not None and mapped.gguf_name.startswith("blk."):
                    self._hook(module, self._linear_hook(mapped.gguf_name, module))
            elif _is_expert_bank(module):
                layer = _LAYER.search(f".{name}.")
                if layer is None:
                    raise UnsupportedError(f"cannot tell the layer of the experts {name!r}")
                self._hook(module, self._experts_hook(int(layer.group(1)), module))
        if not self._handles:
            raise UnsupportedError(f"found no weight matrices to collect in a {model_type} "
                                   "model")

    def _hook(self, module: torch.nn.Module, hook: Callable[..., None]) -> None:
        self._handles.append(module.register_forward_pre_hook(hook))

    def _entry(self, name: str, n_mat: int, n_columns: int, device: torch.device) -> _Stats:
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = _Stats(n_mat, n_columns, device)
        return stats

    def _linear_hook(self, gguf_name: str, module: torch.nn.Linear) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            rows = args[0]
            self._entry(gguf_name, 1, module.in_features, rows.device).add(rows)

        return hook

    def _experts_hook(self, layer: int, module: torch.nn.Module) -> Callable[..., None]:
        names = [f"blk.{layer}.{kind}.weight" for kind in EXPERT_TENSORS]
        n_expert, _, hidden = module.gate_up_proj.shape
        n_ff = module.down_proj.shape[-1]

        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            hidden_states, top_k_index = args[0], args[1]
            device = hidden_states.device
            gate, up, down = (self._entry(names[0], n_expert, hidden, device),
                              self._entry(names[1], n_expert, hidden, device),
                              self._entry(names[2], n_expert, n_ff, device))
            with torch.no_grad():
                for expert in torch.unique(top_k_index).tolist():
                    if not 0 <= expert < n_expert:
                        continue
                    # One row per (token, slot) routed here, as llama.cpp counts them.
                    tokens = (top_k_index == expert).nonzero()[:, 0]
                    rows = hidden_states[tokens]
                    gate.add(rows, expert)
                    up.add(rows, expert)
                    projected = torch.nn.functional.linear(rows, module.gate_up_proj[expert])
                    g, u = projected.chunk(2, dim=-1)
                    down.add(module.act_fn(g) * u, expert)

        return hook

    def stats(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(sums [n_mat, ne0] float32, counts [n_mat]) by GGUF name, for write_imatrix."""
        sums = {n: s.sums.cpu().numpy().astype(np.float32) for n, s in self._stats.items()}
        counts = {n: s.counts.cpu().numpy() for n, s in self._stats.items()}
        return sums, counts

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _is_expert_bank(module: torch.nn.Module) -> bool:
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    return (isinstance(gate_up, torch.nn.Parameter) and isinstance(down, torch.nn.Parameter)
            and gate_up.dim() == 3 and down.dim() == 3 and hasattr(module, "act_fn"))
