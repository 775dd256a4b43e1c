"""The README's Python example runs as written (from a scratch folder that sees the repo's
fixtures and experiments), so the first thing a newcomer tries never rots."""

import re

from conftest import ROOT


def test_readme_python_example(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for name in ("tests", "experiments"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["cache"]["resid_pre", 1].shape == (1, 9, 32)
    assert isinstance(scope["text"], str) and scope["grid"].values.shape == (2, 7)
    assert (tmp_path / "runs" / "heads" / "report.html").is_file()
    assert len(scope["run"].steps) == 200 and scope["run"].report.is_file()
    assert (tmp_path / "runs" / "mood.gguf").is_file() and sorted(scope["vec"].vectors) == [1]
    assert scope["lab"].report.resolve() == (tmp_path / "runs" / "toy-phase" / "loss.svg").resolve() and scope["lab"].lines
