"""Tests for medai.collection.pseudonymize: keyed, stable pseudonyms and the key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import stat
from pathlib import Path

import pytest
from pydicom.uid import UID

from medai.collection.pseudonymize import Pseudonymizer, create_key_file, load_key
from medai.errors import KeyFileError

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def test_patient_pseudonym_is_stable_and_well_formed() -> None:
    first = Pseudonymizer(KEY_A).patient_pseudonym("SITE-A", "MRN-4711")
    again = Pseudonymizer(KEY_A).patient_pseudonym("SITE-A", "MRN-4711")
    assert first == again
    assert re.fullmatch(r"P[A-Z2-7]{16}", first), first
    # padding as found in DICOM values does not change the pseudonym
    assert Pseudonymizer(KEY_A).patient_pseudonym("SITE-A", " MRN-4711\x00") == first


def test_different_patients_and_keys_give_different_pseudonyms() -> None:
    p = Pseudonymizer(KEY_A)
    assert p.patient_pseudonym("SITE-A", "MRN-4711") != p.patient_pseudonym("SITE-A", "MRN-4712")
    assert Pseudonymizer(KEY_B).patient_pseudonym("SITE-A", "MRN-4711") != p.patient_pseudonym(
        "SITE-A", "MRN-4711"
    )
    assert Pseudonymizer(KEY_B).uid("1.2.3.4") != p.uid("1.2.3.4")
    ids = [f"MRN-{i}" for i in range(20)]
    other = Pseudonymizer(KEY_B)
    assert [other.date_offset_days("SITE-A", i) for i in ids] != [
        p.date_offset_days("SITE-A", i) for i in ids
    ]


def test_the_issuer_is_part_of_the_patient() -> None:
    p = Pseudonymizer(KEY_A)
    assert p.patient_pseudonym("SITE-A", "1001") != p.patient_pseudonym("SITE-B", "1001")
    assert p.date_offset_days("SITE-A", "1001") != p.date_offset_days("SITE-B", "1001")
    # Spaces, padding and case of the issuer do not matter.
    assert p.patient_pseudonym(" hospital a\x00", "1001") == p.patient_pseudonym(
        "HOSPITAL A", "1001"
    )
    # Unambiguous: moving characters between issuer and ID gives another patient.
    assert p.patient_pseudonym("A1", "23") != p.patient_pseudonym("A", "123")
    assert p.patient_pseudonym("A\x001", "23") != p.patient_pseudonym("A", "1\x0023")


def test_no_issuer_is_the_id_only_scheme_of_catalogs_before_0006() -> None:
    # Byte for byte what medai computed before 0006, so those patients keep their pseudonyms.
    digest = hmac.new(KEY_A, b"medai/v1/patient-id\x00MRN-4711", hashlib.sha256).digest()
    old = "P" + base64.b32encode(digest[:10]).decode("ascii")
    p = Pseudonymizer(KEY_A)
    assert p.patient_pseudonym(None, " MRN-4711") == old
    assert p.patient_pseudonym("", "MRN-4711") != old
    date = hmac.new(KEY_A, b"medai/v1/date-offset\x00MRN-4711", hashlib.sha256).digest()
    assert p.date_offset_days(None, "MRN-4711") == -(1 + int.from_bytes(date[:8], "big") % 3650)


def test_site_patient_key_and_pixel_hasher_are_keyed() -> None:
    a, b = Pseudonymizer(KEY_A), Pseudonymizer(KEY_B)
    assert re.fullmatch(r"[0-9a-f]{32}", a.site_patient_key("site-a", "1001"))
    assert a.site_patient_key("site-a", "1001") != a.site_patient_key("site-b", "1001")
    assert a.site_patient_key("site-a", "1001") != b.site_patient_key("site-a", "1001")
    first, second = a.pixel_hasher(), b.pixel_hasher()
    first.update(b"pixels")
    second.update(b"pixels")
    assert first.hexdigest() != second.hexdigest() != hashlib.sha256(b"pixels").hexdigest()


@pytest.mark.parametrize("original", ["1.2.840.113619.2.55.3.1", "1.2.3", "9" * 64])
def test_uid_format(original: str) -> None:
    new = Pseudonymizer(KEY_A).uid(original)
    assert new == Pseudonymizer(KEY_A).uid(original)
    assert new.startswith("2.25.")
    assert len(new) <= 64
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", new), new
    assert UID(new).is_valid
    # a version-8, RFC 9562 variant UUID behind the 2.25 arc
    value = int(new[5:])
    assert (value >> 76) & 0xF == 8
    assert (value >> 62) & 0x3 == 0b10


def test_uids_are_distinct_for_distinct_inputs() -> None:
    p = Pseudonymizer(KEY_A)
    originals = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(2000)]
    assert len({p.uid(u) for u in originals}) == len(originals)


def test_date_offset_negative_stable_and_per_patient() -> None:
    p = Pseudonymizer(KEY_A)
    offsets = [p.date_offset_days("SITE-A", f"MRN-{i}") for i in range(300)]
    assert all(-3650 <= o <= -1 for o in offsets)
    assert len(set(offsets)) > 200  # spread over the range, not a constant
    assert p.date_offset_days("SITE-A", "MRN-7") == Pseudonymizer(KEY_A).date_offset_days(
        "SITE-A", "MRN-7"
    )


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")


def test_key_file_created_0600_and_loadable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "campaign.key"
    create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path)
    assert len(key) == 32
    assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
    other = tmp_path / "other.key"
    create_key_file(other)
    assert load_key(other) != key


def test_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "campaign.key"
    create_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_key_file(path)
    assert path.read_bytes() == before


def test_missing_key_file_says_what_to_run(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(KeyFileError) as info:
        load_key(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "medai campaign init" in message


@pytest.mark.parametrize("content", ["", "zz" * 32, "ab" * 16, "ab" * 33])
def test_malformed_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(KeyFileError, match="malformed"):
        load_key(path)
