"""The README's model example runs as written (it asserts equivariance itself)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "IcoUNet(" in b and "assert_close" in b)
    exec(compile(example, "README.md", "exec"), {})
