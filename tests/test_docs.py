"""Every example in the README and in docstrings runs; the README's inspect output is the real output."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import peft_slider
from peft_slider.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_blocks_run(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_readme_inspect_output_is_the_real_output(capsys):
    block = next(b for b in _blocks("text") if b.startswith("$ peft-slider inspect flux --scope visual"))
    assert main(["inspect", "flux", "--scope", "visual"]) == 0
    real = capsys.readouterr().out
    expected = block.split("\n", 1)[1]
    assert [line.rstrip() for line in real.strip().splitlines()] == [
        line.rstrip() for line in expected.strip().splitlines()
    ]


MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(peft_slider.__path__, prefix="peft_slider.")
    if name not in ("peft_slider.__main__",)
)


class _FencedParser(doctest.DocTestParser):
    """HF docstrings wrap examples in ```py fences; drop the fence lines so doctest sees plain examples."""

    def parse(self, string, name="<string>"):
        return super().parse(re.sub(r"(?m)^\s*```\w*\s*$", "", string), name)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(parser=_FencedParser())
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module_name):
        runner.run(test)
    assert runner.failures == 0
