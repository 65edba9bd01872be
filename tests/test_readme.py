"""The README's drop-in example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_dropin_example_runs():
    text = README.read_text()
    section = text.split("## Drop-in", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    x_bar, y_bar = scope["x_bar"], scope["y_bar"]
    assert x_bar.shape == scope["x"].shape == y_bar.shape
    assert scope["y"].shape == scope["x"].shape
    assert scope["schedule"].tau == 1.0
