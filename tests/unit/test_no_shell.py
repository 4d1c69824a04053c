"""No shell anywhere in kvm-manager's code: every process gets an argv list. (The e2e suite
also watches what a real start runs: tests/e2e/test_security.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kvmmgr"
# Calls that take a command line for a shell, whatever their arguments.
SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
}


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(call: ast.Call) -> tuple[str, str] | None:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    return None


def test_no_call_goes_through_a_shell() -> None:
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) > 20
    found = []
    for source in sources:
        for call in _calls(ast.parse(source.read_text(), str(source))):
            where = f"{source.name}:{call.lineno}"
            if _dotted(call) in SHELL_CALLS:
                found.append(f"{where} {ast.unparse(call.func)}")
            for keyword in call.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(f"{where} shell={ast.unparse(keyword.value)}")
    assert found == []


def test_the_check_finds_what_it_looks_for() -> None:
    calls = _calls(ast.parse("os.system('ls')\nsubprocess.run('ls', shell=True)\n"))
    assert _dotted(calls[0]) in SHELL_CALLS
    assert [k.arg for k in calls[1].keywords] == ["shell"]
