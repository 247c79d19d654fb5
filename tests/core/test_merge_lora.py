"""LoRA adapters made by PEFT merge to the weights PEFT's own merge_and_unload() gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import factories
from app.core.errors import BadInputError
from app.core.jobs import RecordingReporter
from app.core.merge import MergeRequest


def make_adapter(base: Path, folder: Path, **lora: object) -> dict[str, torch.Tensor]:
    """Save a PEFT LoRA adapter with random A and B; return PEFT's merged weights."""
    import peft
    import transformers

    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(init_lora_weights=False, **lora)  # type: ignore[arg-type]
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            # DoRA starts with m = ‖W + ΔW‖ and saved modules as copies of the base's: moved
            # as training would, so that merging them right can be told from leaving them.
            if "lora_magnitude_vector" in name or "modules_to_save" in name:
                param.mul_(1 + 0.2 * torch.randn_like(param))
    wrapped.save_pretrained(folder)
    merged = wrapped.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return factories.make_hf_model(tmp_path_factory.mktemp("lora") / "base", "llama")


@pytest.mark.parametrize("lora", [
    {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    {"r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q_proj", "up_proj"],
     "rank_pattern": {"up_proj": 2}, "alpha_pattern": {"layers.1.self_attn.q_proj": 3}},
    {"r": 4, "lora_alpha": 4, "target_modules": ["embed_tokens", "k_proj"]},
    {"r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": ["q_proj", "down_proj"]},
    {"r": 8, "lora_alpha": 8, "use_dora": True, "use_rslora": True,
     "target_modules": ["embed_tokens", "v_proj"], "rank_pattern": {"v_proj": 2},
     "modules_to_save": ["lm_head"]},
    {"r": 4, "lora_alpha": 8, "target_modules": ["up_proj"],
     "modules_to_save": ["lm_head", "model.norm"]},
])
def test_lora_merge_matches_peft(llama: Path, tmp_path: Path, lora: dict) -> None:
    adapter = tmp_path / "adapter"
    expected = make_adapter(llama, adapter, **lora)
    config = f"merge_method: passthrough\nmodels:\n  - model: {llama}+{adapter}\n"
    target = tmp_path / "merged"
    MergeRequest(target, config_text=config).run(RecordingReporter())
    merged = load_file(target / "model.safetensors")
    base = load_file(llama / "model.safetensors")
    assert merged.keys() == base.keys()
    changed = 0
    for name, value in merged.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
        changed += not torch.equal(value, base[name])
    assert changed >= 3  # every adapted module of the two layers (and the embedding)


def test_adapter_for_another_base_is_refused(llama: Path, tmp_path: Path) -> None:
    from app.cli import main

    adapter = tmp_path / "adapter"
    make_adapter(llama, adapter, r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    wider = factories.make_hf_model(tmp_path / "wider", "llama", intermediate_size=96,
                                    with_tokenizer=False)
    config = f"merge_method: passthrough\nmodels:\n  - model: {wider}+{adapter}\n"
    with pytest.raises(BadInputError, match="does not fit its base") as caught:
        MergeRequest(tmp_path / "out", config_text=config).plan()
    assert "model.layers.0.mlp.up_proj.weight" in str(caught.value)
    path = tmp_path / "merge.yaml"
    path.write_text(config)
    assert main(["merge", str(path), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
