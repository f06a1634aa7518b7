"""Hatch build hook: put the web pages (the repository's apps/web) into sdists and wheels.

In the repository the pages live outside this package, in apps/web. The sdist carries them as
`web_static/` at its root, and a wheel (built from the repository or from that sdist) carries
them as `ismail_serve/web_static`, where ismail_serve.web finds them when installed.
"""

from __future__ import annotations

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class WebPagesBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        candidates = [root / "web_static", root.parent.parent / "apps" / "web"]
        pages = next((c for c in candidates if (c / "index.html").is_file()), None)
        if pages is None:
            raise RuntimeError(
                "ismail-serve's web pages were not found in "
                + " or ".join(str(c) for c in candidates)
                + ": build from the repository checkout or from an ismail-serve sdist"
            )
        target = "ismail_serve/web_static" if self.target_name == "wheel" else "web_static"
        build_data["force_include"][str(pages)] = target
