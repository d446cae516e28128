"""The published tables match the committed result files, and the docs speak to users, not of work periods."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _renderer():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_table_is_current():
    render = _renderer()
    assert render.check() == [], "stale tables: run `python scripts/render_docs.py`"
    assert render.main(["--check"]) == 0


def test_the_pages_hold_generated_tables():
    render = _renderer()
    names = {m["name"] for path in render.DOCS if path.exists() for m in render.BLOCK.finditer(path.read_text())}
    assert {"readme-summary", "network-targets", "cifar10-trained", "reproduce-runs"} <= names
    assert names <= set(render.RENDERERS)


def test_check_names_a_stale_table(tmp_path):
    render = _renderer()
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- table: cuda-check -->\n| stale |\n<!-- end table -->\n", encoding="utf-8")
    assert render.check([page]) == [f"{page}: cuda-check"]
    text, changed = render.render_text(page.read_text(encoding="utf-8"))
    assert changed == ["cuda-check"]
    assert "| stale |" not in text and "| passed |" in text and text.startswith("intro\n<!-- table: cuda-check -->\n")
    page.write_text(text, encoding="utf-8")
    assert render.check([page]) == []  # rendering is idempotent


def test_an_unknown_table_is_an_error():
    render = _renderer()
    with pytest.raises(SystemExit, match="no renderer"):
        render.render_text("<!-- table: no-such-table -->\n<!-- end table -->\n")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_work_period_narration(path):
    hits = re.findall(r"\b(?:session|issue) [0-9]+", path.read_text(encoding="utf-8"), flags=re.IGNORECASE)
    assert hits == [], f"{path.name}: {hits}"
