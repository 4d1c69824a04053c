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


def shell_calls(source: str, filename: str = "<source>") -> list[str]:
    """Where `source` calls a shell: a shell-taking function, or shell= anything but False."""
    found = []
    for call in (
        node for node in ast.walk(ast.parse(source, filename)) if isinstance(node, ast.Call)
    ):
        where = f"{Path(filename).name}:{call.lineno}"
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and (func.value.id, func.attr) in SHELL_CALLS
        ):
            found.append(f"{where} {ast.unparse(func)}")
        for keyword in call.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{where} shell={ast.unparse(keyword.value)}")
    return found


def test_no_call_goes_through_a_shell() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    assert [hit for path in sources for hit in shell_calls(path.read_text(), str(path))] == []


def test_the_check_finds_what_it_looks_for() -> None:
    code = (
        "os.system('ls')\nsubprocess.run('ls', shell=True)\nsubprocess.run(['ls'], shell=False)\n"
    )
    assert shell_calls(code) == ["<source>:1 os.system", "<source>:2 shell=True"]
