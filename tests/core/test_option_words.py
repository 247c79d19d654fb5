"""The core names the option that is the remedy; the CLI words it as a flag, the window as its
control, and no core message names a command-line flag."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from child_jobs import FailsWithOption

import app
from app.cli.options import cli_words
from app.core.errors import OptionFact, UnsafeInputError
from app.core.jobs import RecordingReporter, run_job
from factories import make_gguf

ROOT = Path(app.__file__).resolve().parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def test_each_front_end_words_the_option() -> None:
    error = UnsafeInputError("the model ships code", hint="allow remote code only if you trust it",
                             option=OptionFact("trust_remote_code", True))
    assert error.message == "the model ships code. allow remote code only if you trust it"
    assert error.worded(cli_words).endswith("(--trust-remote-code)")
    assert cli_words(OptionFact("use_chat_template", False)) == "--raw"
    assert cli_words(OptionFact("backend", "transformers")) == "--backend transformers"
    assert cli_words(OptionFact("require_tokenizer", False)) == "leave out --require-tokenizer"


def test_the_window_words_options_as_controls_or_not_at_all() -> None:
    from app.gui.option_words import gui_words

    assert "Backend" in (gui_words(OptionFact("backend", "transformers")) or "")
    assert gui_words(OptionFact("trust_remote_code", True)) is None  # no such control
    for name, value in (("backend", "transformers"), ("device", "cpu"), ("overwrite", True),
                        ("require_tokenizer", False), ("text_file", None)):
        assert not FLAG.search(gui_words(OptionFact(name, value)) or "")


def test_each_sheet_words_the_option_as_its_own_control() -> None:
    from app.core.convert import ConvertRequest
    from app.core.convert.relayout import RelayoutRequest
    from app.core.merge import MergeRequest
    from app.gui.option_words import gui_words, job_words, merge_words, relayout_words

    replace_it = OptionFact("overwrite", True)
    # Neither sheet can replace an output: the message's "choose another name" stands alone.
    assert merge_words(replace_it) is None
    assert relayout_words(replace_it) is None
    assert "merge sheet" in (merge_words(OptionFact("out_type")) or "")
    assert "layout" in (relayout_words(OptionFact("experts")) or "")
    # Neither sheet has a device control: the convert sheet's is not offered in their place.
    assert merge_words(OptionFact("device", "cpu")) is None
    assert relayout_words(OptionFact("device", "cpu")) is None
    for words in (merge_words, relayout_words):
        for name in ("overwrite", "out_type", "experts", "device", "shard_bytes"):
            assert not FLAG.search(words(OptionFact(name, True)) or "")
    assert job_words(MergeRequest(Path("out"))) is merge_words
    assert job_words(RelayoutRequest(Path("in.gguf"), Path("out.gguf"), "split")) is (
        relayout_words)
    assert job_words(ConvertRequest(Path("in"))) is gui_words


def test_a_job_result_carries_the_option_and_the_reporters_words() -> None:
    plain = run_job(FailsWithOption(), RecordingReporter())
    assert plain.option == OptionFact("backend", "transformers")
    assert plain.error is not None and not FLAG.search(plain.error)

    class CliReporter(RecordingReporter):
        word_option = staticmethod(cli_words)

    assert run_job(FailsWithOption(), CliReporter()).error.endswith("(--backend transformers)")


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_core_message_names_a_command_line_flag() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
                 for path in sorted((ROOT / "core").rglob("*.py"))
                 for line, text in _string_literals(path) if FLAG.search(text)]
    # A plan's notes on kept tensors name the option the user gave on either front end; a
    # frozen build starts its job processes with --job-child, which no user sees.
    allowed = {"--keep-type", "--job-child"}
    assert [o for o in offenders if not any(f"{a}" in o for a in allowed)] == []


def test_the_cli_prints_the_flag(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "m.gguf")
    (tmp_path / "out.gguf").write_bytes(b"already there")
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    result = subprocess.run([sys.executable, "-m", "app", "convert", str(source), "-o",
                             str(tmp_path / "out.gguf"), "--type", "F16"], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "output already exists. choose another name (--overwrite)" in result.stderr
