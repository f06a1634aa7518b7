"""Headless Chromium for the browser tests: Debian's `chromium` (never a downloaded browser).

Imported by tests/test_apps_browser.py and tests/test_finetune_serve.py (which put tests/ on
sys.path themselves, as for _serve.py).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
