"""The manual's Python API example runs as written, in a fresh interpreter without torch, and every
public name is documented there."""

import re
import subprocess
import sys
from pathlib import Path

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "python-api.md"


def _api_example() -> str:
    section = API_PAGE.read_text(encoding="utf-8")
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

    section = API_PAGE.read_text(encoding="utf-8")
    assert set(sapindex.__all__) == {"__version__", *sapindex._API}  # every lazy name is exported, and only those
    for name in sapindex.__all__:
        if name != "__version__":
            assert f"`{name}" in section, f"sapindex.{name} is public but not in docs/reference/python-api.md"
            assert getattr(sapindex, name) is not None
