"""Static check of a model's own Python code against the installed transformers.

Models with `auto_map` ship `modeling_*.py` files written for the transformers of their day.
The code is parsed, never run: every name it imports from transformers, every keyword it
passes to those functions and every attribute it uses on those classes is looked up in the
installed transformers, so "got an unexpected keyword argument 'cache_position'" or
"DynamicCache has no attribute 'from_legacy_cache'" are known before loading.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CodeIssue:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _resolve(module: str, name: str) -> tuple[Any, str | None]:
    """The object `name` from `module` of the installed transformers, or why it is not there."""
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        return None, f"module {module} does not exist"
    except Exception as exc:  # noqa: BLE001 - a transformers module failing to import is a finding
        return None, f"module {module} fails to import ({type(exc).__name__}: {exc})"
    try:
        return getattr(loaded, name), None
    except AttributeError:
        return None, f"{module} has no {name!r}"


def _accepts(obj: Any, keyword: str) -> bool:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return True  # builtins and C functions: nothing to check
    params = signature.parameters
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                    for p in params.values())


class _FileChecker(ast.NodeVisitor):
    def __init__(self, file: str, version: str) -> None:
        self.file = file
        self.version = version
        self.imported: dict[str, Any] = {}  # local name -> resolved transformers object
        self.issues: list[CodeIssue] = []

    def _issue(self, node: ast.AST, text: str) -> None:
        self.issues.append(CodeIssue(self.file, getattr(node, "lineno", 0), text))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0 and (module == "transformers" or module.startswith("transformers.")):
            for alias in node.names:
                if alias.name == "*":
                    continue
                obj, problem = _resolve(module, alias.name)
                if problem:
                    self._issue(node, f"imports {alias.name} from {module}, but in "
                                      f"transformers {self.version} {problem}")
                else:
                    self.imported[alias.asname or alias.name] = obj
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        target: Any = None
        label = ""
        if isinstance(func, ast.Name) and func.id in self.imported:
            target, label = self.imported[func.id], func.id
        elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
              and func.value.id in self.imported):
            owner = self.imported[func.value.id]
            label = f"{func.value.id}.{func.attr}"
            target = getattr(owner, func.attr, None)
            if target is None:
                self._issue(node, f"calls {label}, which transformers {self.version} no "
                                  "longer has")
        if target is not None:
            if inspect.isclass(target):
                target = target.__init__
            for keyword in node.keywords:
                if keyword.arg and not _accepts(target, keyword.arg):
                    self._issue(node, f"passes {keyword.arg}= to {label}, which transformers "
                                      f"{self.version} does not accept (it fails with "
                                      f"\"unexpected keyword argument '{keyword.arg}'\")")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.name.endswith("ForCausalLM"):
            for item in node.body:
                if (isinstance(item, ast.FunctionDef) and item.name == "forward"
                        and any(a.arg == "cache_position" for a in item.args.args
                                + item.args.kwonlyargs)):
                    self._issue(item, f"{node.name}.forward takes cache_position, which "
                                      f"transformers {self.version} no longer passes except "
                                      "through a compatibility shim that later versions drop")
        self.generic_visit(node)


def check_remote_code(folder: Path) -> list[CodeIssue]:
    """Issues of every `*.py` in a model folder, found by parsing (nothing is executed)."""
    import transformers

    issues: list[CodeIssue] = []
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=path.name)
        except (OSError, UnicodeDecodeError, SyntaxError) as exc:
            issues.append(CodeIssue(path.name, getattr(exc, "lineno", 0) or 0,
                                    f"cannot be parsed ({exc})"))
            continue
        checker = _FileChecker(path.name, transformers.__version__)
        checker.visit(tree)
        issues.extend(checker.issues)
    return issues
