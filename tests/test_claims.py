"""Every module keeps a table of its quoted figures and library claims (tests/claims/<module>.md): claim,
source, how it was checked and its status, so the next reviewer can re-check them."""

import re

import pytest

from autograders import settings
from tests.notebooks import load, solution_path

CLAIMS = settings.REPO / "tests" / "claims"
STATUSES = {"ok", "fixed", "removed", "unverified"}


def rows(module: str) -> list[list[str]]:
    lines = (CLAIMS / f"{module}.md").read_text().splitlines()
    table = [ln for ln in lines if ln.startswith("|")][2:]  # skip the header and its rule
    return [[part.strip() for part in ln.strip().strip("|").split("|")] for ln in table]


@pytest.mark.parametrize("module", settings.modules())
def test_claims_table_names_cells_sources_and_status(module):
    assert (CLAIMS / f"{module}.md").is_file(), f"tests/claims/{module}.md is missing"
    ids = {c["id"] for c in load(solution_path(module))["cells"]}
    table = rows(module)
    assert table, f"tests/claims/{module}.md lists no claim"
    for row in table:
        assert len(row) >= 5, f"{module}: a row needs cell | claim | source | checked how | status: {row}"
        cell, claim, source, checked, status = row[:5]
        cells = re.findall(r"[\w-]+", cell)
        assert cells and all(c in ids for c in cells), f"{module}: {cell!r} is not a cell of the notebook"
        assert claim and source and checked, f"{module}: {row}"
        assert status.split()[0].strip(":,.").lower() in STATUSES, f"{module}: unknown status {status!r}"
