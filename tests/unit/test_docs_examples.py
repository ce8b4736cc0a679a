"""The Python API example of docs/ENVELOPE.md section 10 runs as written in an empty directory."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from signed_bus._cli import main as cli_main

DOC = Path(__file__).resolve().parents[2] / "docs" / "ENVELOPE.md"


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_python_api_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = section(DOC.read_text(), "## 10. Python API")
    (shell,) = blocks(example, "sh")
    (code,) = blocks(example, "python")
    monkeypatch.chdir(tmp_path)
    for line in shell.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "signed-bus"
        assert cli_main(argv[1:]) == 0
    exec(compile(code, f"{DOC}:python-api", "exec"), {})
    assert "inference-agent resnet-50@3 hs-2026-01 HS256" in capsys.readouterr().out
