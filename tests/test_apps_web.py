"""ismail_serve.web serves the apps/web pages, from the source tree and from an installed wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ismail_serve.web import PAGES, find_apps_dir, mount_apps, page_urls

ROOT = Path(__file__).resolve().parents[1]
APPS_WEB = ROOT / "apps" / "web"


def _client(apps_dir: Path | None = None) -> TestClient:
    app = FastAPI()
    mount_apps(app, apps_dir)
    return TestClient(app)


def test_source_checkout_serves_pages_from_apps_web() -> None:
    assert find_apps_dir() == APPS_WEB
    client = _client()
    for route, name in PAGES.items():
        response = client.get(route)
        assert response.status_code == 200, route
        assert response.headers["content-type"].startswith("text/html")
        assert response.text == (APPS_WEB / name).read_text()


def test_every_asset_a_page_links_is_served() -> None:
    client = _client()
    for route in PAGES:
        html = client.get(route).text
        links = re.findall(r'(?:href|src)="(assets/[^"]+)"', html)
        assert links, f"{route} links no assets"
        for link in links:
            response = client.get(f"/{link}")
            assert response.status_code == 200, link
            assert response.content == (APPS_WEB / link.removeprefix("assets/")).read_bytes()


def test_every_page_links_the_others() -> None:
    client = _client()
    for route in PAGES:
        html = client.get(route).text
        for other in ("./", "tokenizer", "router"):
            assert f'href="{other}"' in html, (route, other)


def test_pages_need_no_internet() -> None:
    # No CDN, web font or remote script: the pages must work on an offline machine.
    for path in APPS_WEB.rglob("*"):
        if path.suffix in {".html", ".css", ".js"}:
            text = path.read_text()
            assert not re.search(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}/", text), path


def test_pages_are_not_in_the_openapi_schema() -> None:
    # schemathesis explores the API schema; static pages are not part of the API.
    schema_paths = _client().get("/openapi.json").json()["paths"]
    assert not set(PAGES) & set(schema_paths)


def test_directory_without_pages_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>")
    with pytest.raises(FileNotFoundError, match=r"missing tokenizer\.html"):
        mount_apps(FastAPI(), tmp_path)


def test_page_urls_for_the_startup_message() -> None:
    assert page_urls("http://127.0.0.1:8000/") == {
        "chat": "http://127.0.0.1:8000/",
        "tokenizer": "http://127.0.0.1:8000/tokenizer",
        "router": "http://127.0.0.1:8000/router",
    }


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
def test_wheel_carries_the_pages_and_serves_them_when_installed(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run(
        ["uv", "build", "--package", "ismail-serve", "--wheel", "--out-dir", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("ismail_serve-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    for path in APPS_WEB.rglob("*"):
        if path.is_file():
            packaged = site / "ismail_serve" / "web_static" / path.relative_to(APPS_WEB)
            assert packaged.read_bytes() == path.read_bytes(), path
    # Imported from the unpacked wheel (ahead of the workspace's editable install on sys.path),
    # ismail_serve.web must find its packaged copy, not the source tree.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import ismail_serve.web as web\n"
        "print(web.__file__); print(web.find_apps_dir())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(site)], capture_output=True, text=True, check=True
    )
    module_file, apps_dir = result.stdout.split()
    assert Path(module_file).is_relative_to(site)
    assert Path(apps_dir) == site / "ismail_serve" / "web_static"
