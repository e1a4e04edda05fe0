"""UIDs medai makes: under the organisation's root, or 2.25 UUID UIDs; never pydicom's root."""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom.uid import PYDICOM_ROOT_UID, UID

import medai
from medai.config import Settings
from medai.dicom.uids import MAX_ROOT_LENGTH, derived_uid, new_uid

# PS3.5 9.1: components of digits, no leading zero, at most 64 characters in all.
_VALID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_LONGEST_ROOT = "1.2." + "3" * (MAX_ROOT_LENGTH - 4)


def _valid(uid: str) -> bool:
    return bool(_VALID.match(uid)) and len(uid) <= 64 and UID(uid).is_valid


@pytest.mark.parametrize("root", [None, "1.2.840.99999", "0.0", _LONGEST_ROOT])
def test_new_uids_are_valid_distinct_and_under_the_root(root: str | None) -> None:
    made = {new_uid(root) for _ in range(2000)}
    assert len(made) == 2000
    for uid in made:
        assert _valid(uid), uid
        assert uid.startswith(f"{root or '2.25'}.")
        assert not uid.startswith(PYDICOM_ROOT_UID)


@pytest.mark.parametrize("root", [None, "2.25"])
def test_without_a_root_a_new_uid_is_a_uuid(root: str | None) -> None:
    # Under 2.25 only a UUID's integer (< 2**128) may follow, whoever asks for that root.
    value = int(new_uid(root).removeprefix("2.25."))
    assert uuid.UUID(int=value).version == 4
    derived = int(derived_uid(root, "x").removeprefix("2.25."))
    assert uuid.UUID(int=derived).version == 8


@pytest.mark.parametrize("root", [None, "1.2.840.99999", _LONGEST_ROOT])
def test_derived_uids_are_a_function_of_their_parts(root: str | None) -> None:
    first = derived_uid(root, "medai-model", "chest", "7")
    assert first == derived_uid(root, "medai-model", "chest", "7")
    assert first != derived_uid(root, "medai-model", "chest", "8")
    # The parts are separated: moving a character between two parts changes the UID.
    assert derived_uid(root, "ab", "c") != derived_uid(root, "a", "bc")
    assert _valid(first), first
    assert first.startswith(f"{root or '2.25'}.")
    if root is None:  # an RFC 9562 version-8 UUID
        assert uuid.UUID(int=int(first.removeprefix("2.25."))).version == 8


@pytest.mark.parametrize(
    "root", ["", "1.02", "1..2", "1.2.", "a.b", "1.2.3 ", "١.٢", _LONGEST_ROOT + "4"]
)
def test_a_malformed_root_is_refused(root: str) -> None:
    with pytest.raises(ValueError, match="MEDAI_ORG_UID_ROOT"):
        new_uid(root)
    with pytest.raises(ValueError, match="MEDAI_ORG_UID_ROOT"):
        derived_uid(root, "x")


def test_the_setting_takes_a_root_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAI_ORG_UID_ROOT", " 1.2.840.99999 ")
    assert Settings().org_uid_root == "1.2.840.99999"
    monkeypatch.setenv("MEDAI_ORG_UID_ROOT", "")
    assert Settings().org_uid_root is None
    monkeypatch.delenv("MEDAI_ORG_UID_ROOT")
    assert Settings().org_uid_root is None


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ("1.2.826.0.1.3680043.8.498", "pydicom's shared UID root"),
        ("1.2.826.0.1.3680043.8.498.12", "pydicom's shared UID root"),
        (_LONGEST_ROOT + "4", "at most 40 characters"),
        ("1.02.3", "should match pattern"),
        ("1.2.", "should match pattern"),
        ("urn:oid:1.2", "should match pattern"),
    ],
)
def test_the_setting_refuses_a_bad_root(
    monkeypatch: pytest.MonkeyPatch, root: str, says: str
) -> None:
    monkeypatch.setenv("MEDAI_ORG_UID_ROOT", root)
    with pytest.raises(ValidationError, match=says):
        Settings()


def test_a_root_close_to_pydicoms_is_accepted() -> None:
    # Only pydicom's root and what is under it is refused, not a root sharing its digits.
    assert Settings(org_uid_root="1.2.826.0.1.3680043.8.4981").org_uid_root


def test_no_module_of_medai_makes_uids_with_pydicoms_root() -> None:
    # pydicom's generate_uid() defaults to pydicom's root: medai makes its UIDs in
    # medai.dicom.uids, so a new call elsewhere would quietly bring the shared root back.
    calls = []
    for path in Path(medai.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(node, "name", None) or getattr(node, "attr", None)
            if isinstance(node, ast.alias):
                name = node.name
            elif isinstance(node, ast.Name):
                name = node.id
            if name == "generate_uid":
                calls.append(f"{path}:{getattr(node, 'lineno', '?')}")
    assert calls == []
