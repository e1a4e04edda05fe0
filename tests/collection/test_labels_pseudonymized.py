"""Label sheets keyed by already-pseudonymized study UIDs (clinician feedback exports)."""

from __future__ import annotations

import pytest

from medai.collection.campaign.definition import load_campaign
from medai.collection.campaign.label_mapping import SiteLabelMapping
from medai.collection.labels.reading import LabelSheet
from medai.collection.labels.rows import PSEUDONYMIZED_STUDY_UID, locate_columns, parse_rows
from medai.collection.pseudonymize import Pseudonymizer
from medai.errors import LabelSheetError
from tests.utils.campaign import EXAMPLE_CAMPAIGN

UID = "2.25.123456789012345678901234567890"


def _site_a() -> SiteLabelMapping:
    labels = load_campaign(EXAMPLE_CAMPAIGN).labels
    assert labels is not None
    return labels.for_site("site-a")


def test_the_pseudonymized_column_is_used_as_it_is_and_findings_may_be_left_out() -> None:
    # site-a's mapping is keyed by accession number and asks no patient column: a feedback
    # export has neither, and only the findings clinicians gave verdicts on.
    mapping = _site_a()
    header = ["prediction_id", "site", PSEUDONYMIZED_STUDY_UID, "effusion", "clinician"]
    columns = locate_columns(header, mapping, "site-a")
    assert columns.pseudonymized and columns.study_key == 2
    assert columns.findings == {"effusion": 3}
    sheet = LabelSheet(
        header,
        [(2, ["p1", "dr-a", UID, "1", "x"]), (3, ["p2", "dr-a", "Doe^John", "0", "x"])],
        "0" * 64,
    )
    rows, rejected = parse_rows(sheet, columns, mapping, "site-a", Pseudonymizer(b"k" * 32))
    assert [(r.ref, r.findings) for r in rows] == [(UID, {"effusion": 1})]
    assert [(r.row, "not a DICOM UID" in r.reason) for r in rejected] == [(3, True)]


def test_a_feedback_export_without_any_mapped_finding_is_refused() -> None:
    mapping = _site_a()
    with pytest.raises(LabelSheetError, match="lacks the column"):
        locate_columns([PSEUDONYMIZED_STUDY_UID, "fracture"], mapping, "site-a")
