"""Build a wheelhouse: everything an air-gapped machine needs to ``pip install`` sapindex with no package index.

Run on a connected machine, from a sapindex checkout (a script, not a ``sapindex`` command: it builds
sapindex's own wheel from the source tree, which an installed sapindex does not carry). It writes::

    OUT/wheels/            sapindex's wheel and a binary wheel of every dependency, for the target
    OUT/requirements.lock  every dependency pinned with its sha256 (pip --require-hashes)
    OUT/install.sh         the air-gapped side: checks SHA256SUMS, installs with --no-index
    OUT/SHA256SUMS         sha256 of every file above (sha256sum -c)
    OUT.tar                the directory as one file to carry across (--tar)

The target is this machine's Python and platform unless ``--python`` / ``--platform`` name another
(``pip download --only-binary :all:`` with those tags: no source builds on either side). ``--gpu`` swaps
onnxruntime for onnxruntime-gpu (never both in one environment: they ship the same module); ``--torch``
adds the torch side (the ``export`` extra and the CPU build of torch) for an air-gapped calibration
machine.

Usage: python scripts/wheelhouse.py OUT [--extras serve,ray] [--gpu] [--torch] [--python 3.11]
       [--platform manylinux_2_28_x86_64] [--tar]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"  # the CPU build: constraints-cpu.txt pins its local version
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

INSTALL_SH = """#!/bin/sh
# Install sapindex from this wheelhouse on a machine with no package index.
# Usage: ./install.sh [VENV]   (VENV: a virtual environment to create; default: the python3 on PATH)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
(cd "$here" && sha256sum -c --quiet SHA256SUMS)
py=python3
if [ $# -ge 1 ]; then python3 -m venv "$1"; py="$1/bin/python"; fi
"$py" -m pip install --quiet --no-index --find-links "$here/wheels" --require-hashes -r "$here/requirements.lock"
"$py" -m pip install --quiet --no-index --no-deps "$here"/wheels/sapindex-*.whl
"$py" -m sapindex.cli --version
"""


def pip(*args: str) -> None:
    """``python -m pip ARGS``, echoed; exits with pip's status if it fails."""
    cmd = [sys.executable, "-m", "pip", *args]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd)
    if done.returncode:
        sys.exit(f"pip failed ({done.returncode}); the wheelhouse is incomplete")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_name_version(path: Path) -> tuple[str, str]:
    """(normalised name, version) from a wheel's file name (PEP 427)."""
    name, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def build(out: Path, extras: list[str], gpu: bool, torch: bool, python: str | None, platform: str | None,
          torch_index: str = TORCH_INDEX) -> int:
    """Fill ``out`` (see the module); return the bytes of its wheels."""
    wheels = out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:  # a clean copy: setuptools would pack a stale build/ of the checkout
        source = Path(tmp) / "sapindex"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                     "__pycache__", ".pytest_cache", ".mypy_cache"))
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source))
    (own,) = wheels.glob("sapindex-*.whl")
    target = ["--only-binary", ":all:", "--dest", str(wheels)]
    if python:
        target += ["--python-version", python, "--implementation", "cp"]
    if platform:
        target += ["--platform", platform]
    wanted = sorted({*extras, *(["export"] if torch else [])})
    requirement = f"sapindex[{','.join(wanted)}] @ {own.resolve().as_uri()}" if wanted else \
        f"sapindex @ {own.resolve().as_uri()}"
    extra: list[str] = []
    if torch:
        extra = [TORCH, "-c", str(REPO / "constraints-cpu.txt")]
        if torch_index:
            extra += ["--extra-index-url", torch_index]
    if gpu:  # resolved together, so that both agree on numpy & co; the CPU build is then dropped
        extra.append("onnxruntime-gpu")
    pip("download", "--quiet", *target, requirement, *extra)
    if gpu:
        for cpu in wheels.glob("onnxruntime-*.whl"):
            cpu.unlink()
    lock = [f"{name}=={version} --hash=sha256:{sha256(w)}"
            for w in sorted(wheels.glob("*.whl")) if w != own
            for name, version in [wheel_name_version(w)]]
    (out / "requirements.lock").write_text("\n".join(lock) + "\n", encoding="utf-8")
    (out / "install.sh").write_text(INSTALL_SH, encoding="utf-8")
    (out / "install.sh").chmod(0o755)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(out)}\n" for p in files), encoding="utf-8")
    return sum(w.stat().st_size for w in wheels.glob("*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--extras", default="", help="comma-separated extras of sapindex: serve, ray, qdrant")
    ap.add_argument("--gpu", action="store_true", help="onnxruntime-gpu instead of onnxruntime")
    ap.add_argument("--torch", action="store_true", help="the torch side too (export extra, CPU torch)")
    ap.add_argument("--torch-index", default=TORCH_INDEX,
                    help="where the CPU build of torch comes from ('' : the configured indexes only)")
    ap.add_argument("--python", default=None, help="target Python version, e.g. 3.11 (default: this one)")
    ap.add_argument("--platform", default=None, help="target platform tag, e.g. manylinux_2_28_x86_64")
    ap.add_argument("--tar", action="store_true", help="also write OUT.tar")
    args = ap.parse_args()
    extras = [e for e in args.extras.split(",") if e]
    size = build(args.out, extras, args.gpu, args.torch, args.python, args.platform, args.torch_index)
    n = len(list((args.out / "wheels").glob("*.whl")))
    print(f"{args.out}: {n} wheels, {size / 1e6:.0f} MB; on the air-gapped machine: {args.out.name}/install.sh VENV")
    if args.tar:
        with tarfile.open(args.out.with_suffix(".tar"), "w") as tar:
            tar.add(args.out, arcname=args.out.name)
        print(f"{args.out.with_suffix('.tar')}: carry this file across")


if __name__ == "__main__":
    main()
