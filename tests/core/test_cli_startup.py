"""A light start: `modelyard --help` and planning an HF conversion load neither torch nor
transformers; the tokenizer read from tokenizer.json writes the same metadata as transformers'."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import app.cli
import factories
from app.cli import COMMANDS, build_parser
from app.core.convert import tokenizer
from app.core.convert.metadata import entries_of, recording_writer

LOADED = "import sys; print(json.dumps(sorted(m for m in ('torch', 'transformers', 'gguf', " \
         "'numpy') if m in sys.modules)))"


def modules_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"import json\n{code}\n{LOADED}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_lists_every_command_without_loading_libraries() -> None:
    code = ("from app.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert modules_after(code) == []


def test_each_command_line_matches_its_module() -> None:
    """The one-line helps of the lazy table are the commands' own: each module registers its
    commands through `add_command`, which takes the line from the table."""
    for module in {module for module, _line in COMMANDS.values()}:
        source = (Path(app.cli.__file__).parent / f"{module}.py").read_text()
        assert "commands.add_parser(" not in source, module
    parser = build_parser("all")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    registered = {action.dest: action.help for action in commands._choices_actions}
    assert registered == {name: line for name, (_module, line) in COMMANDS.items()}
    assert all(commands.choices[name].get_default("handler") for name in COMMANDS)


def test_a_command_registers_only_its_module() -> None:
    parser = build_parser("relayout")
    args = parser.parse_args(["relayout", "x.gguf", "--experts", "split"])
    assert args.handler.__module__ == "app.cli.relayout"


def test_planning_a_conversion_loads_no_transformers(tiny_models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    code = ("from pathlib import Path\nfrom app.core.convert import plan_conversion\n"
            f"plan_conversion(Path({str(tiny_models['llama'])!r}), "
            f"Path({str(tmp_path / 'o.gguf')!r}), out_type='Q8_0')")
    assert modules_after(code) == ["gguf", "numpy"]


def metadata(folder: Path, monkeypatch: pytest.MonkeyPatch, fast: bool) -> tuple:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(tokenizer, "_file_tokenizer", lambda folder: None)
        writer = recording_writer("llama")
        result = tokenizer.add_tokenizer(writer, folder, factories.TINY_VOCAB, require=True)
    return entries_of(writer), result.notes, result.warnings


@pytest.mark.parametrize("family", ["llama", "mixtral", "qwen2_moe"])
def test_tokenizer_json_gives_what_transformers_gives(family: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / family
    folder.mkdir()
    factories.save_tiny_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": family}))
    assert tokenizer._file_tokenizer(folder) is not None
    assert metadata(folder, monkeypatch, fast=True) == metadata(folder, monkeypatch, fast=False)


def test_added_bos_and_clean_up_are_read_like_transformers(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A post-processor that adds BOS, and a config that turns clean-up on."""
    from tokenizers import Tokenizer, processors

    folder = tmp_path / "bos"
    folder.mkdir()
    factories.save_tiny_tokenizer(folder)
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = backend.token_to_id("<|im_start|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    backend.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["clean_up_tokenization_spaces"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    fast = metadata(folder, monkeypatch, fast=True)
    assert fast == metadata(folder, monkeypatch, fast=False)
    flags = {e.key: e.value for e in fast[0]}
    assert flags["tokenizer.ggml.add_bos_token"] is True


def test_a_model_type_with_its_own_tokenizer_class_asks_transformers(tmp_path: Path) -> None:
    folder = tmp_path / "qwen2"
    folder.mkdir()
    factories.save_tiny_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert tokenizer._file_tokenizer(folder) is None
