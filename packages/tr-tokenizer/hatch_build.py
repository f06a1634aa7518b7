"""Hatch build hook: compile the word segmenter (src/tr_tokenizer/_native.c) into the wheel.

The extension only makes encoding faster: the pure-Python encoder gives the same ids. So a
machine without a C compiler still gets a working (pure-Python) wheel, with a warning saying
what was skipped. An editable install builds the extension next to the sources, where the
.pth file that hatchling writes finds it. Set TR_TOKENIZER_NO_EXTENSION=1 to skip it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MODULE = "tr_tokenizer._native"
SOURCE = Path("src") / "tr_tokenizer" / "_native.c"
# Generated from the Python definitions by tr_tokenizer/_native_layout.py and checked in, so the
# build needs no Python dependency of the package; test_native_layout checks it is current.
HEADER = Path("src") / "tr_tokenizer" / "_native_layout.h"


def compile_extension(root: Path, out_dir: Path) -> Path:
    """Compile the extension with setuptools' compiler driver; return the built file."""
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    flags = [] if sys.platform == "win32" else ["-O2", "-std=c11"]
    ext = Extension(MODULE, [str(SOURCE)], depends=[str(HEADER)], extra_compile_args=flags)
    cwd = os.getcwd()
    os.chdir(root)  # setuptools wants source paths relative to the project
    try:
        cmd = build_ext(Distribution({"name": "tr-tokenizer", "ext_modules": [ext]}))
        cmd.build_lib = str(out_dir)
        cmd.build_temp = str(out_dir / "tmp")
        cmd.ensure_finalized()
        cmd.run()
        return Path(cmd.get_ext_fullpath(MODULE))
    finally:
        os.chdir(cwd)


class NativeExtensionBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or os.environ.get("TR_TOKENIZER_NO_EXTENSION"):
            return
        root = Path(self.root)
        self._tmp = Path(tempfile.mkdtemp(prefix="tr-tokenizer-build-"))
        try:
            built = compile_extension(root, self._tmp)
        except Exception as exc:  # no compiler, no headers: the pure-Python wheel still works
            print(
                f"tr-tokenizer: WARNING: the compiled segmenter was not built ({exc}); "
                "the wheel uses the pure-Python encoder (same ids, several times slower on "
                "new words). Install a C compiler and the Python headers to build it.",
                file=sys.stderr,
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version == "editable":
            # the editable wheel points at src/: put the extension there (it is git-ignored).
            # Copied beside it and renamed over it: running processes have the old file
            # mapped, and overwriting it in place crashes them.
            target = root / "src" / "tr_tokenizer" / built.name
            staged = target.with_name(f".{built.name}.tmp")
            shutil.copy2(built, staged)
            os.replace(staged, target)
        else:
            build_data["force_include"][str(built)] = f"tr_tokenizer/{built.name}"

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
