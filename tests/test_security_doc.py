"""docs/SECURITY.md names the tests that prove its mitigations: they must exist.

Every ``tests/path.py::test_name`` in the threat model is checked by importing the test module
and looking the function up (a parametrized test is named by its function alone), so renaming or
deleting a test that a mitigation relies on fails here instead of leaving the document wrong.
Every test cited in the body is also in the closing "Mitigation → test" table, and the table
cites nothing the body does not.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.project_files import REPO_ROOT

DOC = REPO_ROOT / "docs" / "SECURITY.md"
REFERENCE = re.compile(r"(tests/[\w/]+\.py)((?:::\w+)+)")
TABLE_HEADING = "## Mitigation → test"
REQUIRED_SECTIONS = ("## Assets", "## Actors", "## What it does not do", "## Gaps",
                     "## Reporting a vulnerability", TABLE_HEADING)


def _references(text: str) -> set[tuple[str, str]]:
    """``(path, "name")`` or ``(path, "Class::name")`` for every reference in ``text``."""
    return {(path, names.removeprefix("::")) for path, names in REFERENCE.findall(text)}


def _parts() -> tuple[str, str]:
    text = DOC.read_text(encoding="utf-8")
    assert TABLE_HEADING in text, f"{DOC} has no '{TABLE_HEADING}' table"
    body, table = text.split(TABLE_HEADING, 1)
    return body, table


def _exists(path: str, names: str) -> bool:
    file = REPO_ROOT / path
    if not file.is_file():
        return False
    module = importlib.import_module(".".join(Path(path).with_suffix("").parts))
    target: object = module
    for name in names.split("::"):
        target = getattr(target, name, None)
        if target is None:
            return False
    return callable(target) and names.rsplit("::", 1)[-1].startswith("test")


def test_the_document_has_its_sections() -> None:
    text = DOC.read_text(encoding="utf-8")
    for heading in REQUIRED_SECTIONS:
        assert re.search(rf"^{re.escape(heading)}", text, re.MULTILINE), heading


def test_every_cited_test_exists() -> None:
    body, table = _parts()
    cited = _references(body) | _references(table)
    assert len(cited) >= 50, "the threat model cites fewer tests than expected: was it cut?"
    missing = sorted(f"{path}::{names}" for path, names in cited if not _exists(path, names))
    assert not missing, "docs/SECURITY.md cites tests that do not exist:\n" + "\n".join(missing)


def test_the_table_lists_every_cited_test_and_nothing_else() -> None:
    body, table = _parts()
    in_body, in_table = _references(body), _references(table)
    assert in_body - in_table == set(), "cited above but missing from the table"
    assert in_table - in_body == set(), "in the table but never cited above"


@pytest.mark.parametrize("bad", ["tests/gateway/test_ingest.py::test_no_such_test",
                                 "tests/no_such_file.py::test_anything"])
def test_a_reference_to_a_missing_test_is_caught(bad: str) -> None:
    ((path, names),) = _references(f"see `{bad}`")
    assert not _exists(path, names)
