"""The runtime and the SAP core must never pull in torch or transformers (checked in a clean interpreter)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "colpali_engine", "torchvision")


@pytest.mark.parametrize("module", ["sapindex", "sapindex.sap", "sapindex.runtime", "sapindex.fingerprint",
                                    "sapindex.testing.toy_pages", "sapindex.errors", "sapindex.families",
                                    "sapindex.runtime.encoder", "sapindex.runtime.preprocess.paligemma",
                                    "sapindex.runtime.preprocess.idefics3", "sapindex.runtime.layout"])
def test_module_imports_no_torch(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_every_runtime_module_is_torch_free():
    """Walk the whole runtime package, so a new module cannot slip an import in."""
    code = (
        "import sys, pkgutil, importlib, sapindex.runtime as r\n"
        "for m in pkgutil.walk_packages(r.__path__, 'sapindex.runtime.'): importlib.import_module(m.name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_detects_a_leak(tmp_path):
    """The check itself works: importing torch is seen."""
    code = "import sys, torch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
