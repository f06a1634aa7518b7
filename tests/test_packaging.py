"""Each package installs and imports on its own, without the rest of the workspace.

These tests build wheels with `uv build` and install them into fresh virtual environments, which
is what a user who depends on a single package from another repository gets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["tr-tokenizer", "ismail-core", "ismail-kernels", "ismail-serve"]

pytestmark = pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")


def _run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(package: str, out: Path) -> Path:
    _run("uv", "build", "--package", package, "--wheel", "--out-dir", out)
    wheels = sorted(out.glob(f"{package.replace('-', '_')}-*.whl"))
    assert wheels, f"no wheel for {package} in {out}"
    return wheels[-1]


def _fresh_venv(path: Path) -> Path:
    _run("uv", "venv", "--quiet", "--python", sys.executable, path)
    return path / "bin" / "python"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_metadata(package: str) -> None:
    meta = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]
    assert meta["name"] == package
    assert meta["version"] == "0.1.0"
    assert meta["license"] == "Apache-2.0"
    assert meta["description"]
    for doc in ("README.md", "CHANGELOG.md"):
        assert (ROOT / "packages" / package / doc).is_file()


def test_no_local_paths_in_project_files() -> None:
    files = [ROOT / "pyproject.toml", ROOT / "uv.lock"]
    files += [ROOT / "packages" / p / "pyproject.toml" for p in PACKAGES]
    for f in files:
        text = f.read_text()
        assert "file://" not in text, f"{f} contains a file:// URL"
        assert str(ROOT) not in text, f"{f} contains this checkout's path"


@pytest.mark.slow
@pytest.mark.parametrize("package", PACKAGES)
def test_package_builds_sdist_and_wheel_from_sdist(package: str, tmp_path: Path) -> None:
    """Plain `uv build` makes the sdist, then the wheel from the unpacked sdist."""
    _run("uv", "build", "--package", package, "--out-dir", tmp_path)
    stem = package.replace("-", "_")
    assert len(list(tmp_path.glob(f"{stem}-0.1.0.tar.gz"))) == 1
    assert len(list(tmp_path.glob(f"{stem}-0.1.0-*.whl"))) == 1


_TOKENIZER_SCRIPT = (
    "import importlib.util, sys, tr_tokenizer\n"
    "assert importlib.util.find_spec('torch') is None, 'torch must not be installed'\n"
    "tok = tr_tokenizer.load()\n"
    "text = 'Kitaplarımızdan birini okudunuz mu?\\n\\tİSTANBUL 😀'\n"
    "ids = tok.encode(text).ids\n"
    "assert tok.vocab_size == 32768 and tok.decode(ids) == text, ids\n"
    "assert (tok._encoder.native is not None) == (sys.argv[1] == 'native')\n"
    "print(tr_tokenizer.__version__)\n"
)


@pytest.mark.slow
def test_tokenizer_wheel_installs_without_torch(tmp_path: Path) -> None:
    """The wheel (built from the sdist) carries the compiled segmenter and works without torch."""
    wheel = _build_wheel("tr-tokenizer", tmp_path / "dist")
    assert not wheel.name.endswith("-none-any.whl"), f"{wheel.name}: the extension was not built"
    python = _fresh_venv(tmp_path / "venv")
    _run("uv", "pip", "install", "--quiet", "--python", python, wheel)
    out = _run(python, "-c", _TOKENIZER_SCRIPT, "native", cwd=tmp_path)
    assert out.stdout.strip() == "0.1.0"
    cli = tmp_path / "venv" / "bin" / "tr-tokenizer"
    ids = _run(cli, "encode", "--ids", "Ankara'da", cwd=tmp_path).stdout.split()
    assert _run(cli, "decode", *ids, cwd=tmp_path).stdout == "Ankara'da"


@pytest.mark.slow
def test_tokenizer_wheel_without_a_c_compiler_is_pure_python(tmp_path: Path) -> None:
    """No working compiler: the build warns and gives a pure-Python wheel that still works."""
    env = {**os.environ, "CC": "false"}
    out = tmp_path / "dist"
    cmd = ["uv", "build", "--package", "tr-tokenizer", "--wheel", "--out-dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "the compiled segmenter was not built" in result.stderr
    (wheel,) = out.glob("tr_tokenizer-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    python = _fresh_venv(tmp_path / "venv")
    _run("uv", "pip", "install", "--quiet", "--python", python, wheel)
    assert _run(python, "-c", _TOKENIZER_SCRIPT, "pure", cwd=tmp_path).stdout.strip() == "0.1.0"


@pytest.mark.slow
def test_kernels_wheel_installs_without_core(tmp_path: Path) -> None:
    wheel = _build_wheel("ismail-kernels", tmp_path / "dist")
    python = _fresh_venv(tmp_path / "venv")
    _run("uv", "pip", "install", "--quiet", "--python", python, wheel)
    script = (
        "import importlib.util, ismail_kernels\n"
        "for other in ('ismail_core', 'tr_tokenizer', 'ismail_serve'):\n"
        "    assert importlib.util.find_spec(other) is None, other\n"
        "print(ismail_kernels.__version__)\n"
    )
    out = _run(python, "-c", script, cwd=tmp_path)
    assert out.stdout.strip() == "0.1.0"
