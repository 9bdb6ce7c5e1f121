"""The torch-free packages never pull in torch or transformers (checked in a clean interpreter).

``pip install sapindex`` must index and search where no torch is installed: every module of the
packages below is imported in a fresh interpreter, so a new module cannot slip an import in.
"""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "colpali_engine", "torchvision")
# every module of these packages, walked
TORCH_FREE_PACKAGES = ("sapindex.runtime", "sapindex.index", "sapindex.search", "sapindex.serve", "sapindex.eval",
                       "sapindex.benchdata", "sapindex.cli", "sapindex.cluster", "sapindex.compression",
                       "sapindex.engines")
# single modules (their packages hold torch code too)
TORCH_FREE_MODULES = ("sapindex", "sapindex.sap", "sapindex.families", "sapindex.formats", "sapindex.errors",
                      "sapindex.fingerprint", "sapindex.artifacts", "sapindex.testing.toy_pages",
                      "sapindex.exporter.graphs")


def _heavy_after(code: str) -> str:
    code += f"\nimport sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_module_imports_no_torch(module):
    assert _heavy_after(f"import importlib; importlib.import_module({module!r})") == "", module


@pytest.mark.parametrize("package", TORCH_FREE_PACKAGES)
def test_every_module_of_the_package_is_torch_free(package):
    """Each module in its own interpreter, so the failure names the module that leaks."""
    code = (f"import pkgutil, importlib; p = importlib.import_module({package!r})\n"
            f"print('\\n'.join(m.name for m in pkgutil.walk_packages(p.__path__, {package!r} + '.')))")
    # a package's __main__ runs the program when imported: its imports are its package's
    modules = [m for m in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout.split() if not m.endswith(".__main__")]
    assert modules, f"{package} has no modules?"
    leaks = {m: h for m in modules if (h := _heavy_after(f"import importlib; importlib.import_module({m!r})"))}
    assert not leaks, f"modules importing torch: {leaks}"


def test_the_public_api_is_torch_free():
    """Touching every public name of ``sapindex`` loads the runtime, never torch."""
    assert _heavy_after("import sapindex\nfor n in sapindex.__all__: getattr(sapindex, n)") == ""


def test_detects_a_leak():
    """The check itself works: importing torch is seen."""
    assert _heavy_after("import torch") != ""
