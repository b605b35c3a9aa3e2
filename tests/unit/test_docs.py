"""The documentation names every filter the registry knows."""

from pathlib import Path

from infini_gateway.filters import filter_names

DOCS = Path(__file__).resolve().parents[2] / "docs" / "filters.rst"


def test_every_registered_filter_has_a_section_in_docs_filters_rst():
    text = DOCS.read_text()
    missing = [
        name for name in filter_names() if f"\n{name}\n{'-' * len(name)}\n" not in text
    ]
    assert missing == [], f"docs/filters.rst has no section for {missing}"
