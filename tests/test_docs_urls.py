"""The docs promise only brokers that exist: every broker URL they show has a working scheme."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from afterwork.brokers import broker_class
from afterwork.errors import InvalidURL

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Pages about other libraries' brokers (benchmarks compare afterwork with its peers).
ABOUT_PEERS = {"benchmarks.md"}
SCHEME = re.compile(r"\b([a-z][a-z0-9+]*)://")
NOT_BROKERS = {"http", "https", "file"}


def broker_schemes(page: Path) -> set[str]:
    """Schemes the page shows, except in a paragraph that says they are not available."""
    return {
        scheme
        for paragraph in page.read_text().split("\n\n")
        if "not available yet" not in paragraph
        for scheme in SCHEME.findall(paragraph)
        if scheme not in NOT_BROKERS
    }


@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in ABOUT_PEERS], ids=str)
def test_every_broker_url_scheme_in_the_docs_works(page: Path) -> None:
    for scheme in broker_schemes(page):
        try:
            broker_class(f"{scheme}://localhost/0")
        except InvalidURL as exc:
            pytest.fail(f"{page.name} shows {scheme}://, which afterwork refuses: {exc}")
