"""The web pages of apps/web: chat at `/`, the tokenizer playground at `/tokenizer` and the
router view (which experts each token goes to) at `/router`.

The pages are static files (HTML, CSS, JavaScript; no build step) that talk to the /v1 API from
the browser. An installed wheel carries them as `ismail_serve/web_static` (a hatch
`force-include` of the repository's apps/web); an editable or workspace install reads them
straight from apps/web in the source tree, so edits show up on reload.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

# URL path -> HTML file in the apps directory.
PAGES: dict[str, str] = {
    "/": "index.html",
    "/tokenizer": "tokenizer.html",
    "/router": "router.html",
}
# Where the pages' CSS and JavaScript live; the HTML refers to them relatively as "assets/...".
ASSETS_PATH = "/assets"


def find_apps_dir() -> Path | None:
    """The directory holding the pages: the installed package's copy first, else the source tree."""
    packaged = resources.files("ismail_serve") / "web_static"
    if packaged.is_dir():
        return Path(str(packaged))
    # src/ismail_serve/web.py -> repository root is four levels up.
    source = Path(__file__).resolve().parents[4] / "apps" / "web"
    if (source / PAGES["/"]).is_file():
        return source
    return None


def page_urls(base_url: str) -> dict[str, str]:
    """Full URLs of the pages for a server at `base_url`, e.g. for the start-up message."""
    base = base_url.rstrip("/")
    return {"chat": f"{base}/", "tokenizer": f"{base}/tokenizer", "router": f"{base}/router"}


def mount_apps(app: FastAPI, apps_dir: Path | None = None) -> None:
    """Serve the chat page at `/`, the tokenizer playground at `/tokenizer`, the router view at
    `/router` and their assets.

    `apps_dir` defaults to `find_apps_dir()`. Raises FileNotFoundError naming the directory when
    the pages are missing, rather than serving 404s later.
    """
    directory = Path(apps_dir) if apps_dir is not None else find_apps_dir()
    if directory is None:
        raise FileNotFoundError(
            "the ismail web pages were not found: neither ismail_serve/web_static (installed "
            "wheel) nor apps/web (source checkout) exists; reinstall ismail-serve or pass "
            "apps_dir="
        )
    missing = [name for name in PAGES.values() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} does not hold the ismail web pages (missing {', '.join(missing)}); "
            "point apps_dir at the repository's apps/web folder"
        )

    for route, name in PAGES.items():
        app.add_api_route(
            route, _page_endpoint(directory / name), methods=["GET"], include_in_schema=False
        )
    app.mount(ASSETS_PATH, StaticFiles(directory=directory), name="apps-assets")


def _page_endpoint(path: Path):
    """A GET handler returning one HTML page; no-cache so a reload picks up a new version."""

    async def page() -> FileResponse:
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})

    page.__name__ = f"page_{path.stem}"
    return page
