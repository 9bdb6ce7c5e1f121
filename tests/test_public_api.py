"""The README's Python API example runs as written, in a fresh interpreter without torch."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_indexes_and_searches(tmp_path):
    code = _api_example() + "\nimport sys; print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    from sapindex.runtime.defaults import example_pages

    n = len(example_pages())
    assert lines[0].startswith(f"{n} pages,")
    hits = lines[1:-1]
    assert len(hits) == 3 and all(" page " in h for h in hits)
    scores = [float(h.split()[0]) for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert lines[-1] == "no torch"
    assert (tmp_path / "my-index").is_dir()


def test_public_names_are_the_documented_ones():
    import sapindex

    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    for name in sapindex.__all__:
        if name != "__version__":
            assert f"`{name}" in section, f"sapindex.{name} is public but not documented in README 'Python API'"
            assert getattr(sapindex, name) is not None
