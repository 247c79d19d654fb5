"""`tokenizer_source: union`: every model's tokens in one vocabulary, the embedding rows of the
tokens a model lacks taken as mergekit takes them, and mergekit's own output when it is
installed (it is not a dependency)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import factories
from app.core.jobs import RecordingReporter
from app.core.merge import MergeRequest

TEXT = "Hello zebra_tok and apple_tok <|special_b|>"


def with_tokens(folder: Path, seed: int, tokens: list[str], special: list[str]) -> Path:
    """A tiny Llama whose tokenizer has extra tokens, its embeddings grown to match."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    factories.make_hf_model(folder, "llama", seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(tokens)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": special})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for weight in (model.get_input_embeddings().weight, model.lm_head.weight):
            weight[-len(tokens) - len(special):] = torch.randn(
                len(tokens) + len(special), weight.shape[1], generator=gen)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("union")
    # shared_tok: the base and b, not c; zebra_tok: b and c, not the base.
    return (with_tokens(root / "a", 1, ["apple_tok", "shared_tok"], []),
            with_tokens(root / "b", 2, ["zebra_tok", "shared_tok"], ["<|special_b|>"]),
            with_tokens(root / "c", 3, ["cherry_tok", "zebra_tok"], []))


@pytest.fixture(scope="module")
def pair(trio: tuple[Path, Path, Path]) -> tuple[Path, Path]:
    return trio[0], trio[1]


CONFIGS = {
    "linear": "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n"
              "  - model: {b}\n    parameters: {{weight: 3}}\n",
    "ties": "merge_method: ties\nbase_model: {a}\nmodels:\n  - model: {a}\n"
            "  - model: {b}\n    parameters: {{weight: 0.7, density: 0.5}}\n",
    "three": "merge_method: task_arithmetic\nbase_model: {a}\nmodels:\n"
             "  - model: {b}\n    parameters: {{weight: 0.5}}\n"
             "  - model: {c}\n    parameters: {{weight: 0.8}}\n",
}


def merge(name: str, models: tuple[Path, ...], out: Path) -> str:
    text = CONFIGS[name].format(a=models[0], b=models[1], c=models[-1]) + \
        "dtype: float32\ntokenizer_source: union\n"
    MergeRequest(out, config_text=text).run(RecordingReporter())
    return text


def test_union_rows_follow_mergekits_rules(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merge("linear", pair, tmp_path / "out")
    union = AutoTokenizer.from_pretrained(tmp_path / "out")
    tok_a, tok_b = (AutoTokenizer.from_pretrained(p) for p in pair)
    assert set(union.get_vocab()) == set(tok_a.get_vocab()) | set(tok_b.get_vocab())
    # The base's tokens keep their ids; the others follow.
    assert all(union.get_vocab()[t] == i for t, i in tok_a.get_vocab().items())
    merged = load_file(tmp_path / "out" / "model.safetensors")
    a, b = (load_file(p / "model.safetensors") for p in pair)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape[0] == len(union)
        for token, new in union.get_vocab().items():
            in_a, in_b = tok_a.get_vocab().get(token), tok_b.get_vocab().get(token)
            row_a = a[name][in_a] if in_a is not None else None
            row_b = b[name][in_b] if in_b is not None else None
            # A token one model lacks: that model contributes the other's row.
            expected = (1 * (row_a if row_a is not None else row_b) +
                        3 * (row_b if row_b is not None else row_a)) / 4
            torch.testing.assert_close(merged[name][new], expected, rtol=1e-6, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = union(TEXT, return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


@pytest.mark.skipif(importlib.util.find_spec("mergekit") is None,
                    reason="mergekit is not installed")
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_union_as_mergekit(name: str, trio: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    from transformers import AutoTokenizer

    text = merge(name, trio, tmp_path / "ours")
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "theirs"),
              MergeOptions(write_model_card=False, quiet=True))
    ours_tok, theirs_tok = (AutoTokenizer.from_pretrained(tmp_path / d)
                            for d in ("ours", "theirs"))
    ours_vocab, theirs_vocab = ours_tok.get_vocab(), theirs_tok.get_vocab()
    if name == "ties":
        assert ours_vocab == theirs_vocab
    # mergekit lists the models as a Python set: without a base model its union starts from
    # any of them, and with three it numbers the tokens new to the base in the set's order.
    # The same tokens then, each with its own row, compared token by token.
    assert ours_vocab.keys() == theirs_vocab.keys()
    assert ours_tok.convert_ids_to_tokens(ours_tok(TEXT).input_ids) == \
        theirs_tok.convert_ids_to_tokens(theirs_tok(TEXT).input_ids)
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    theirs: dict[str, torch.Tensor] = {}
    for shard in sorted((tmp_path / "theirs").glob("*.safetensors")):
        theirs.update(load_file(shard))
    assert ours.keys() == theirs.keys()
    order = torch.tensor([theirs_vocab[token] for token in ours_vocab])
    rows = torch.tensor(list(ours_vocab.values()))
    for key, value in theirs.items():
        mine = ours[key]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            mine, value = mine[rows], value[order]
        difference = (mine - value).norm() / value.norm().clamp_min(1e-12)
        assert difference <= 1e-5, (key, float(difference))


@pytest.mark.parametrize(("base_named", "stand_in_for_c"), [(True, 2.0), (False, 11.0)])
def test_stand_in_rows(base_named: bool, stand_in_for_c: float) -> None:
    from app.core.merge.vocab import UnionVocab

    # Tokens: t0 in all three; t1 in the base and b; t2 in b and c; t3 in c only.
    ids = {0: [0, 1, -1, -1], 1: [0, 1, 2, -1], 2: [0, -1, 1, 2]}
    vocab = UnionVocab({}, 4, ids, 0 if base_named else None)
    rows = [torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0], [30.0]]),
            torch.tensor([[100.0], [200.0], [300.0]])]
    a, b, c = vocab.permuted([0, 1, 2], rows)
    assert a.flatten().tolist() == [1.0, 2.0, 115.0, 300.0]  # t2: the mean of b's and c's
    assert b.flatten().tolist() == [10.0, 20.0, 30.0, 300.0]  # t3: c's, the only one
    # t1: the base's row when a base model is named, else the mean of the base's and b's.
    assert c.flatten().tolist() == [100.0, stand_in_for_c, 200.0, 300.0]


@pytest.mark.parametrize("name", ["../escape.json", "config.json", "sub/tokenizer.json"])
def test_a_plans_tokenizer_file_names_stay_inside_the_output(
        name: str, pair: tuple[Path, Path], tmp_path: Path) -> None:
    # The union tokenizer's files travel in the plan, which may have been made in another
    # process: a name that is a path, or one of the merge's own files, is refused and nothing
    # is left behind.
    from app.core.errors import BadInputError
    from app.core.merge.execute import run_merge

    out = tmp_path / "nested" / "out"
    out.parent.mkdir()
    text = CONFIGS["ties"].format(a=pair[0], b=pair[1], c=pair[1]) + \
        "dtype: float32\ntokenizer_source: union\n"
    plan = MergeRequest(out, config_text=text).plan()
    assert plan.vocab is not None
    plan.vocab.tokenizer_files = {**plan.vocab.tokenizer_files, name: b"{}"}
    with pytest.raises(BadInputError, match="tokenizer file"):
        run_merge(plan, RecordingReporter(), check_memory=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["nested"]
