"""`tokenizer_source: union`: one vocabulary holding every model's tokens, as mergekit builds it.

The union starts from the base model's tokenizer; each token another model has and the base
lacks is added (in the order the models are listed, the base first), then every added token of
every model. Each model's vocabulary tensors (embeddings, output head) are laid out in the union's
order before the method sees them. A token a model lacks takes a stand-in row, chosen as mergekit
0.1.5 chooses it (`tokenizer/embed.py`): the row of the one model that has it, else the base's
row when the base has it (and a base model is named), else the mean of the rows of the models
that have it (zero when none has).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import BadInputError

if TYPE_CHECKING:
    import torch

    from app.core.merge.sources import ModelSource


@dataclass
class UnionVocab:
    # The union tokenizer as the files transformers saves (name → bytes), written beside the
    # merge: plain data, so a plan made in one process runs in another.
    tokenizer_files: dict[str, bytes]
    size: int
    # Per model (plan index): for each union token id, the model's own id, or -1.
    ids: dict[int, list[int]]
    prefer_base: int | None  # the named base model, whose rows stand in first

    def permuted(self, models: Sequence[int], tensors: Sequence[torch.Tensor]
                 ) -> list[torch.Tensor]:
        """Each model's [rows, ...] tensor (float32) in the union's order, missing tokens filled
        with the stand-in rows."""
        import torch

        maps = [torch.tensor(self.ids[m], dtype=torch.long, device=tensors[0].device)
                for m in models]
        present = [m >= 0 for m in maps]
        own = [t[m.clamp(min=0)] for t, m in zip(tensors, maps, strict=True)]
        count = torch.stack(present).sum(dim=0)
        # Summed in model order, as mergekit adds them, then divided by how many had the token.
        total = torch.zeros_like(own[0])
        for rows, has in zip(own, present, strict=True):
            total[has] += rows[has]
        stand_in = total / count.clamp(min=1).reshape(-1, *[1] * (total.dim() - 1))
        if self.prefer_base in models:
            position = list(models).index(self.prefer_base)
            # The base's row wins unless the token is the only model's (then it is the same).
            use = present[position]
            stand_in[use] = own[position][use]
        out = []
        for rows, has in zip(own, present, strict=True):
            out.append(torch.where(has.reshape(-1, *[1] * (rows.dim() - 1)), rows, stand_in))
        return out


def _tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"its tokenizer cannot be read for a union vocabulary ({exc})",
                            path=source.path) from None


def vocab_rows(source: ModelSource) -> int | None:
    value = source.config.get("vocab_size")
    return value if isinstance(value, int) else None


def build_union(models: Sequence[ModelSource], order: Sequence[int], base: int,
                base_named: bool) -> UnionVocab:
    """The union of the tokenizers of `models` at `order` (plan indices, the base first)."""
    from transformers import AutoTokenizer

    if any(m.path.is_file() for m in (models[i] for i in order)):
        raise BadInputError("a union vocabulary needs each model's Hugging Face tokenizer; a "
                            "GGUF input has none", path=next(m.path for m in models
                                                            if m.path.is_file()))
    tokenizers = {i: _tokenizer(models[i]) for i in order}
    limits = {i: vocab_rows(models[i]) or len(tokenizers[i].get_vocab()) for i in order}
    beyond = [tok for tok, idx in tokenizers[base].get_vocab().items() if idx >= limits[base]]
    if beyond:
        raise BadInputError(f"the base tokenizer has {len(beyond)} token(s) past the model's "
                            f"vocab_size {limits[base]} (e.g. {beyond[0]!r})",
                            path=models[base].path,
                            hint="use the base's tokenizer or another model's")
    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for i in order:
        tokenizer = tokenizers[i]
        decoder = tokenizer.added_tokens_decoder
        contents = {info.content for info in decoder.values()}
        for token, index in tokenizer.get_vocab().items():
            if index < limits[i] and token not in contents:
                regular.setdefault(token, None)
        for index, info in decoder.items():
            if index < limits[i]:
                added.setdefault(info.content, info)
    # A copy of the base's tokenizer (saved and reloaded: adding tokens must not touch it).
    with tempfile.TemporaryDirectory() as folder:
        tokenizers[base].save_pretrained(folder)
        union = AutoTokenizer.from_pretrained(folder, use_fast=True)
    base_vocab = tokenizers[base].get_vocab()
    for token in regular:
        if token not in added and token not in base_vocab:
            union.add_tokens(token)
    for info in added.values():
        union.add_tokens(info)
    vocab = union.get_vocab()
    size = len(vocab)
    ids: dict[int, list[int]] = {}
    for i in order:
        own = tokenizers[i].get_vocab()
        mapping = [-1] * size
        for token, new in vocab.items():
            old = own.get(token, -1)
            mapping[new] = old if 0 <= old < limits[i] else -1
        ids[i] = mapping
    with tempfile.TemporaryDirectory() as folder:
        union.save_pretrained(folder)
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    return UnionVocab(files, size, ids, base if base_named else None)
