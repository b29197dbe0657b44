"""The operator dashboard: a static single page (``static/``: HTML, CSS, vanilla JS, no external
assets) served by the CS at ``/dashboard`` behind the operator login, and the RPO history it charts
(rpo.py). The page reads the same JSON APIs as any client, with the session cookie."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
# The page's files, by the name served under /dashboard/ (exactly these; nothing else is served).
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
INDEX = "index.html"
