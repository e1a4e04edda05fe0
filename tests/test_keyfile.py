"""Key files shared by collection and serving: created once, reused, never replaced."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medai.errors import KeyFileError
from medai.keyfile import KEY_BYTES, create_key_file, ensure_key_file, key_fingerprint, load_key


def test_ensure_creates_a_key_once_and_then_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "campaign.key"
    assert ensure_key_file(path) is True
    key = load_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key_file(path) is False
    assert load_key(path) == key


def test_ensure_reuses_a_key_another_process_wrote_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "serving.key"
    real_create = create_key_file

    def lose_the_race(target: Path) -> None:
        real_create(target)  # the other process wins...
        real_create(target)  # ...and this one finds its file

    monkeypatch.setattr("medai.keyfile.create_key_file", lose_the_race)
    assert ensure_key_file(path) is False
    assert len(load_key(path)) == KEY_BYTES


def test_ensure_never_replaces_a_malformed_key(tmp_path: Path) -> None:
    path = tmp_path / "campaign.key"
    path.write_text("not hex\n", encoding="ascii")
    with pytest.raises(KeyFileError, match="malformed"):
        ensure_key_file(path)
    assert path.read_text(encoding="ascii") == "not hex\n"


def test_fingerprints_tell_keys_apart_without_showing_them() -> None:
    first, second = b"\x01" * KEY_BYTES, b"\x02" * KEY_BYTES
    assert key_fingerprint(first) == key_fingerprint(first)
    assert key_fingerprint(first) != key_fingerprint(second)
    assert len(key_fingerprint(first)) == 16
    assert first.hex()[:16] not in key_fingerprint(first)
