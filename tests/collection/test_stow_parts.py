"""What a STOW-RS response may echo of a part: its UIDs as sent, only when they are UIDs."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medai.collection.receivers.stow import PartIdentity, identify_part, is_valid_uid
from tests.utils.campaign import dataset_bytes


def test_uid_syntax() -> None:
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.1")
    assert is_valid_uid("2.25." + "9" * 39)
    for bad in ("", "1..2", "01.2", "1.2.", "DOE^JOHN", "1.2 ", "1." + "2" * 63):
        assert not is_valid_uid(bad), bad


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_a_part_is_identified_by_the_uids_it_was_sent_with() -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path
    ds = pydicom.dcmread(path)
    assert identify_part(dataset_bytes(ds)) == PartIdentity(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    )
    # Free text where a UID belongs is never echoed back (it might name the patient).
    ds.SOPInstanceUID = "DOE^JOHN 1970"
    assert identify_part(dataset_bytes(ds)).sop_instance_uid is None
    assert identify_part(dataset_bytes(ds)).study_instance_uid == str(ds.StudyInstanceUID)


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_what_is_not_dicom_has_no_identity() -> None:
    assert identify_part(b"a radiology report, not an image") == PartIdentity()
    assert identify_part(b"\x00" * 128 + b"DICM" + b"\xff" * 40) == PartIdentity()
