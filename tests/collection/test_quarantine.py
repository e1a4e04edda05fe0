"""The quarantine: private permissions, atomic idempotent puts, sidecars and the retention purge."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from medai.collection.quarantine import Quarantine, QuarantinedFile
from medai.errors import NotDicom, TruncatedDicom

RAW = b"DICM but not really; PatientName=DOE^JANE" * 10


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_root_is_created_private_and_tightened(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "a" / "quarantine")
    assert _mode(quarantine.root) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    Quarantine(loose)
    assert _mode(loose) == 0o700


def test_put_writes_raw_and_sidecar_privately(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    before = dt.datetime.now(dt.UTC)
    kept = quarantine.put(
        RAW,
        reason=NotDicom("no DICM prefix and no valid element"),
        site="site-a",
        source="folder",
        original_name="DOE_JANE.dcm",
    )
    sha = hashlib.sha256(RAW).hexdigest()
    assert kept == QuarantinedFile(sha, f"{sha[:2]}/{sha}.raw", len(RAW))
    raw_path = quarantine.root / kept.relative_path
    sidecar_path = raw_path.with_suffix(".json")
    assert raw_path.read_bytes() == RAW and quarantine.read(sha) == RAW
    assert _mode(raw_path) == _mode(sidecar_path) == 0o600
    assert _mode(raw_path.parent) == 0o700
    sidecar = json.loads(sidecar_path.read_text())
    received_at = dt.datetime.fromisoformat(sidecar.pop("received_at"))
    assert before <= received_at <= dt.datetime.now(dt.UTC)
    assert sidecar == {
        "sha256": sha,
        "relative_path": kept.relative_path,
        "byte_size": len(RAW),
        "reason_code": "not-dicom",
        "reason": "no DICM prefix and no valid element",
        "site": "site-a",
        "source": "folder",
        "original_name": "DOE_JANE.dcm",
    }
    assert not list((quarantine.root / ".tmp").iterdir())


def test_put_again_is_idempotent_and_keeps_the_first_sidecar(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    first = quarantine.put(
        RAW, reason=NotDicom("first"), site="site-a", source="folder", original_name=None
    )
    [entry] = list(quarantine.entries())
    again = quarantine.put(
        RAW, reason=TruncatedDicom("second"), site="site-b", source="cstore", original_name="x"
    )
    assert again == first
    assert list(quarantine.entries()) == [entry]
    assert entry.reason_code == "not-dicom" and entry.original_name is None
    files = [p for p in quarantine.root.rglob("*") if p.is_file()]
    assert len(files) == 2


def test_put_completes_a_sidecar_lost_in_a_crash(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    kept = quarantine.put(RAW, reason=NotDicom("x"), site="site-a", source="folder")
    (quarantine.root / kept.relative_path).with_suffix(".json").unlink()
    assert list(quarantine.entries()) == []
    quarantine.put(RAW, reason=NotDicom("x"), site="site-a", source="folder")
    assert [e.sha256 for e in quarantine.entries()] == [kept.sha256]


def _age(quarantine: Quarantine, sha: str, days: float) -> None:
    sidecar = quarantine.root / sha[:2] / f"{sha}.json"
    data = json.loads(sidecar.read_text())
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    data["received_at"] = when.isoformat()
    sidecar.chmod(0o600)
    sidecar.write_text(json.dumps(data))


def test_purge_removes_entries_older_than_the_cutoff(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    old = quarantine.put(b"old bad file", reason=NotDicom("x"), site="site-a", source="folder")
    new = quarantine.put(b"new bad file", reason=NotDicom("x"), site="site-a", source="folder")
    _age(quarantine, old.sha256, days=100)
    # A crash between raw file and sidecar: the raw file alone, old by its mtime.
    orphan = quarantine.put(b"orphan", reason=NotDicom("x"), site="site-a", source="folder")
    orphan_raw = quarantine.root / orphan.relative_path
    orphan_raw.with_suffix(".json").unlink()
    stale = time.time() - 100 * 86400
    os.utime(orphan_raw, (stale, stale))
    tmp_leftover = quarantine.root / ".tmp" / "crashed.tmp"
    tmp_leftover.write_bytes(b"partial")
    os.utime(tmp_leftover, (stale, stale))

    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    assert quarantine.purge(cutoff) == 2
    assert [e.sha256 for e in quarantine.entries()] == [new.sha256]
    assert not (quarantine.root / old.relative_path).exists()
    assert not orphan_raw.exists() and not tmp_leftover.exists()
    assert (quarantine.root / new.relative_path).exists()
    assert quarantine.purge(cutoff) == 0
    with pytest.raises(ValueError, match="timezone"):
        quarantine.purge(dt.datetime(2026, 1, 1))


def test_remove_and_invalid_names(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    kept = quarantine.put(RAW, reason=NotDicom("x"), site="site-a", source="folder")
    assert quarantine.remove(kept.sha256) and not quarantine.remove(kept.sha256)
    assert list(quarantine.entries()) == []
    with pytest.raises(ValueError):
        quarantine.read("../../etc/passwd")
