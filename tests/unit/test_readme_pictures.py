"""The README's pictures (scripts/screenshots.py makes them): each exists and is a small PNG."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 200_000  # a README stays quick to load and the repository small


def readme_images() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text) + re.findall(r'<img [^>]*src="([^"]+)"', text)


def test_readme_shows_the_live_page_at_desktop_and_phone_width():
    assert {"docs/img/live-page-desktop.png", "docs/img/live-page-phone.png"} <= set(readme_images())


def test_every_readme_picture_is_a_committed_small_png():
    for path in readme_images():
        data = (REPO / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) < MAX_BYTES, f"{path}: {len(data):,} bytes"
