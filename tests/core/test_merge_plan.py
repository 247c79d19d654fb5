"""Coverage: every base tensor gets an action; broken or mismatched inputs are refused with the
offenders named; expert layouts are matched through canonical names; merged models load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import factories
from app.core.errors import BadInputError, OptionError
from app.core.jobs import RecordingReporter
from app.core.merge import MergeRequest, parse_config
from app.core.merge.planner import check_plan, plan_merge

FAMILIES = ("llama", "mistral", "qwen2", "qwen2_moe", "mixtral")


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("merge-families")
    return {family: (factories.make_hf_model(root / f"{family}-a", family, seed=1),
                     factories.make_hf_model(root / f"{family}-b", family, seed=2,
                                             with_tokenizer=False))
            for family in FAMILIES}


def ties_yaml(base: Path, other: Path, extra: str = "") -> str:
    return (f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {base}\n"
            f"  - model: {other}\n    parameters:\n      weight: 0.7\n      density: 0.5\n"
            f"{extra}")


def fuse_mixtral_experts(source: Path, folder: Path) -> Path:
    """The tiny Mixtral with experts fused as transformers 5 holds them in memory."""
    import shutil

    shutil.copytree(source, folder)
    tensors = load_file(source / "model.safetensors")
    fused: dict[str, torch.Tensor] = {}
    layers = sorted({int(n.split(".")[2]) for n in tensors if n.startswith("model.layers.")})
    for layer in layers:
        head = f"model.layers.{layer}.block_sparse_moe"
        n_experts = len({n for n in tensors if n.startswith(f"{head}.experts.")}) // 3
        fused[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.stack([
            torch.cat([tensors.pop(f"{head}.experts.{e}.w1.weight"),
                       tensors.pop(f"{head}.experts.{e}.w3.weight")]) for e in range(n_experts)])
        fused[f"model.layers.{layer}.mlp.experts.down_proj"] = torch.stack(
            [tensors.pop(f"{head}.experts.{e}.w2.weight") for e in range(n_experts)])
        fused[f"model.layers.{layer}.mlp.gate.weight"] = tensors.pop(f"{head}.gate.weight")
    save_file({**tensors, **fused}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_every_base_tensor_is_merged_and_the_model_generates(
        family: str, family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    import transformers

    base, other = family_models[family]
    target = tmp_path / "merged"
    reporter = RecordingReporter()
    result = MergeRequest(target, config_text=ties_yaml(base, other)).run(reporter)
    base_names = set(load_file(base / "model.safetensors"))
    merged = load_file(target / "model.safetensors")
    assert set(merged) == base_names
    assert result.counts == {"merged": len(base_names), "copied": 0, "refused": 0}
    report = (target / "merge_report.json").read_text()
    assert all(name in report for name in base_names)
    assert any(line.startswith("merged model.layers.1.self_attn.q_proj.weight from")
               for line in reporter.messages())
    model = transformers.AutoModelForCausalLM.from_pretrained(target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(target)
    out = model.generate(**tokenizer("Hello world", return_tensors="pt"), max_new_tokens=4,
                         do_sample=False)
    assert out.shape[1] > 2


def test_broken_input_missing_attention_is_refused_with_names(
        family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    import shutil

    base, other = family_models["mixtral"]
    broken = tmp_path / "broken"
    shutil.copytree(other, broken)
    dropped = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1)
               for p in ("q", "k", "v", "o")]
    factories.drop_tensors(broken / "model.safetensors", dropped)
    plan = plan_merge(parse_config(ties_yaml(base, broken)), tmp_path / "out")
    refused = {a.name: a.reason for a in plan.refused}
    assert set(refused) == set(dropped)
    assert all(str(broken) in reason for reason in refused.values())
    with pytest.raises(BadInputError) as caught:
        check_plan(plan)
    assert "model.layers.0.self_attn.q_proj.weight" in str(caught.value)
    with pytest.raises(BadInputError):
        MergeRequest(tmp_path / "out", config_text=ties_yaml(base, broken)).run(
            RecordingReporter())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()


def test_partial_inputs_merge_what_they_have_when_allowed(
        family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    import shutil

    base, other = family_models["llama"]
    broken = tmp_path / "broken"
    shutil.copytree(other, broken)
    factories.drop_tensors(broken / "model.safetensors", ["model.norm.weight"])
    request = MergeRequest(tmp_path / "out", config_text=ties_yaml(base, broken),
                           allow_partial=True)
    plan = request.plan()
    norm = next(a for a in plan.actions if a.name == "model.norm.weight")
    assert norm.action == "copied" and norm.reason == "present in one model only"
    request.run(RecordingReporter())
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["model.norm.weight"],
                       load_file(base / "model.safetensors")["model.norm.weight"])


def test_fused_and_per_expert_mixtral_merge_through_canonical_names(
        family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    base, other = family_models["mixtral"]
    fused_other = fuse_mixtral_experts(other, tmp_path / "fused-b")
    config = (f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: "
              f"{{weight: 1.0}}\n  - model: {fused_other}\n    parameters: {{weight: 3.0}}\n")
    MergeRequest(tmp_path / "per-expert", config_text=config).run(RecordingReporter())
    merged = load_file(tmp_path / "per-expert" / "model.safetensors")
    a, b = load_file(base / "model.safetensors"), load_file(other / "model.safetensors")
    assert set(merged) == set(a)
    for name in a:
        torch.testing.assert_close(merged[name], (a[name] + 3 * b[name]) / 4)

    # The other way round: a fused base keeps its layout; per-expert inputs are stacked into it.
    fused_base = fuse_mixtral_experts(base, tmp_path / "fused-a")
    config = (f"merge_method: linear\nmodels:\n  - model: {fused_base}\n    parameters: "
              f"{{weight: 1.0}}\n  - model: {other}\n    parameters: {{weight: 3.0}}\n")
    MergeRequest(tmp_path / "fused", config_text=config).run(RecordingReporter())
    merged = load_file(tmp_path / "fused" / "model.safetensors")
    fa, fb = load_file(fused_base / "model.safetensors"), load_file(
        fuse_mixtral_experts(other, tmp_path / "fused-b2") / "model.safetensors")
    assert set(merged) == set(fa)
    for name in fa:
        torch.testing.assert_close(merged[name], (fa[name] + 3 * fb[name]) / 4)


def test_unknown_architecture_still_merges(family_models: dict[str, tuple[Path, Path]],
                                           tmp_path: Path) -> None:
    import json
    import shutil

    folders = []
    for name, source in zip("ab", family_models["llama"], strict=True):
        folder = tmp_path / name
        shutil.copytree(source, folder)
        tensors = {k.replace("model.layers.", "transformer.blocks.").replace("self_attn", "attn"):
                   v for k, v in load_file(source / "model.safetensors").items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "made_up_arch"
        config["architectures"] = ["MadeUpForCausalLM"]
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    reporter = RecordingReporter()
    result = MergeRequest(tmp_path / "out", config_text=ties_yaml(*folders)).run(reporter)
    assert result.counts["refused"] == 0
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == set(
        load_file(folders[0] / "model.safetensors"))


def test_mismatched_architectures_and_shapes_are_refused(
        family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    llama, _ = family_models["llama"]
    qwen, _ = family_models["qwen2"]
    with pytest.raises(OptionError, match="different architectures"):
        plan_merge(parse_config(ties_yaml(llama, qwen)), tmp_path / "out")
    wide = factories.make_hf_model(tmp_path / "wide", "llama", intermediate_size=96,
                                   with_tokenizer=False)
    plan = plan_merge(parse_config(ties_yaml(llama, wide)), tmp_path / "out")
    refused = [a.name for a in plan.refused]
    assert "model.layers.0.mlp.up_proj.weight" in refused
    assert all("mlp" in name for name in refused)


def test_passthrough_slices_renumber_layers_and_update_config(
        family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    import json

    import transformers

    a, b = family_models["qwen2"]
    config = (f"merge_method: passthrough\ndtype: float16\nslices:\n"
              f"  - sources:\n      - model: {a}\n        layer_range: [0, 2]\n"
              f"  - sources:\n      - model: {b}\n        layer_range: [1, 2]\n")
    target = tmp_path / "frankenmerge"
    MergeRequest(target, config_text=config).run(RecordingReporter())
    merged = load_file(target / "model.safetensors")
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert torch.equal(merged["model.layers.2.mlp.up_proj.weight"],
                       tb["model.layers.1.mlp.up_proj.weight"].half())
    assert torch.equal(merged["model.layers.1.mlp.up_proj.weight"],
                       ta["model.layers.1.mlp.up_proj.weight"].half())
    assert merged["model.embed_tokens.weight"].dtype == torch.float16
    out_config = json.loads((target / "config.json").read_text())
    assert out_config["num_hidden_layers"] == 3
    if "layer_types" in out_config:
        assert len(out_config["layer_types"]) == 3
    transformers.AutoModelForCausalLM.from_pretrained(target)


def test_sharded_output_and_sharded_input(family_models: dict[str, tuple[Path, Path]],
                                          tmp_path: Path) -> None:
    import json

    base, other = family_models["llama"]
    sharded = factories.make_hf_model(tmp_path / "sharded", "llama", seed=2,
                                      max_shard_size="100KB", with_tokenizer=False)
    assert (sharded / "model.safetensors.index.json").is_file()
    target = tmp_path / "out"
    MergeRequest(target, config_text=ties_yaml(base, sharded),
                 shard_bytes=150_000).run(RecordingReporter())
    index = json.loads((target / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((target / s).is_file() for s in shards)
    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        merged.update(load_file(target / shard))
    single = tmp_path / "single"
    MergeRequest(single, config_text=ties_yaml(base, other)).run(RecordingReporter())
    reference = load_file(single / "model.safetensors")
    assert merged.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(merged[name], value), name


def test_dare_is_deterministic_byte_for_byte(family_models: dict[str, tuple[Path, Path]],
                                             tmp_path: Path) -> None:
    base, other = family_models["mistral"]
    config = (f"merge_method: dare_ties\nbase_model: {base}\nseed: 5\nmodels:\n"
              f"  - model: {base}\n  - model: {other}\n"
              f"    parameters: {{weight: 0.8, density: 0.4}}\ndtype: bfloat16\n")
    for name in ("one", "two"):
        MergeRequest(tmp_path / name, config_text=config).run(RecordingReporter())
    one = (tmp_path / "one" / "model.safetensors").read_bytes()
    assert one == (tmp_path / "two" / "model.safetensors").read_bytes()
    MergeRequest(tmp_path / "three", config_text=config, seed=6).run(RecordingReporter())
    assert one != (tmp_path / "three" / "model.safetensors").read_bytes()


def test_cancel_leaves_nothing_and_inputs_are_untouched(
        family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    from app.core.jobs import run_job

    base, other = family_models["llama"]
    before = factories.tree_digest(base, other)

    class CancelAfterFirst(RecordingReporter):
        def progress(self, done: float, total: float, text: str = "") -> None:
            super().progress(done, total, text)
            self.token.cancel()

    target = tmp_path / "out"
    result = run_job(MergeRequest(target, config_text=ties_yaml(base, other)),
                     CancelAfterFirst())
    assert result.status == "cancelled"
    assert not target.exists() and not (tmp_path / "out.part").exists()
    assert factories.tree_digest(base, other) == before
    target.mkdir()
    with pytest.raises(BadInputError, match="output already exists"):
        MergeRequest(target, config_text=ties_yaml(base, other)).plan()


def test_tokenizer_source_gives_the_tokenizer(family_models: dict[str, tuple[Path, Path]],
                                              tmp_path: Path) -> None:
    import shutil

    base, other = family_models["llama"]
    with_tokenizer = tmp_path / "other"
    shutil.copytree(other, with_tokenizer)
    import json

    tokenizer = json.loads((base / "tokenizer.json").read_text())
    tokenizer["added_tokens"][0]["content"] = "<|other-pad|>"
    (with_tokenizer / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = ties_yaml(base, with_tokenizer, f"tokenizer_source: {with_tokenizer}\n")
    MergeRequest(tmp_path / "out", config_text=config).run(RecordingReporter())
    written = (tmp_path / "out" / "tokenizer.json").read_text()
    assert written == (with_tokenizer / "tokenizer.json").read_text()
    assert "<|other-pad|>" in written


def test_a_tied_input_gives_its_embeddings_as_the_head(
        family_models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    base, _ = family_models["llama"]
    tied = factories.make_hf_model(tmp_path / "tied", "llama", seed=3, with_tokenizer=False,
                                   tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(tied / "model.safetensors")
    config = (f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: "
              f"{{weight: 1}}\n  - model: {tied}\n    parameters: {{weight: 1}}\n")
    reporter = RecordingReporter()
    MergeRequest(tmp_path / "out", config_text=config).run(reporter)
    merged = load_file(tmp_path / "out" / "model.safetensors")
    a, b = load_file(base / "model.safetensors"), load_file(tied / "model.safetensors")
    torch.testing.assert_close(merged["lm_head.weight"],
                               (a["lm_head.weight"] + b["model.embed_tokens.weight"]) / 2)
    assert not reporter.messages("warning")
