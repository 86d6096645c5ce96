"""The studio: a page for making a picture book in a browser, served by the front service at /studio/.

Plain files from the repository's `studio/` folder (no build step, nothing fetched from the internet). They hold
no data, so the guards let them through without an API key; the page sends the key with its own API calls.
"""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles

STUDIO_DIR = Path(__file__).resolve().parent.parent / "studio"

# html=True: /studio/ answers index.html.
studio_app = StaticFiles(directory=STUDIO_DIR, html=True)
