"""Backups: ``medai backup`` create / incremental / restore beside ``tar`` and ``pg_dump`` + rsync.

A deployment of N tiny synthetic instances (default 10,000: one small DX template from
``medai.dicom.synth`` given new patient, study, series and instance UIDs, 8 instances a
study) goes through the real ingest pipeline into a fresh home. Then, timed:

* ``medai``: ``create_backup`` into an empty folder (the first, full backup), 1 % more
  instances ingested, ``create_backup`` again (incremental: only the new objects are copied),
  ``restore_backup`` of the second set into a new home (and a new database), and
  ``verify_backup`` of it;
* the baselines: for SQLite, ``tar -cf`` of the whole home and ``tar -xf`` of it (no
  incremental form: the second tar is as long as the first); for PostgreSQL, ``pg_dump -Fc``
  plus ``rsync -a`` of the home (``cp -a`` without rsync), the second one incremental as
  rsync is, and ``pg_restore`` plus ``rsync`` back.

Neither baseline is consistent while the deployment runs (tar and rsync copy the SQLite
file and the store at different moments), checks a hash, or records an anchor; they are the
floor of what copying the bytes costs.

    python benchmarks/backup.py [--instances 10000] [--no-postgres]
                                [--postgres-url postgresql+psycopg://postgres@127.0.0.1/test]

SQLite always; PostgreSQL when the server answers (databases ``medai_bench_backup_*`` are
created and dropped). Prints one table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pydicom.uid
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medai.collection.campaign.definition import load_campaign  # noqa: E402
from medai.collection.campaign.setup import init_campaign  # noqa: E402
from medai.collection.outcomes import Offer  # noqa: E402
from medai.collection.pipeline import IngestPipeline  # noqa: E402
from medai.config import Settings  # noqa: E402
from medai.dicom.synth import generate  # noqa: E402
from medai.ops.backup import create_backup  # noqa: E402
from medai.ops.backup_restore import restore_backup  # noqa: E402
from medai.ops.backup_verify import verify_backup  # noqa: E402

BATCH = 64
PER_STUDY = 8


def template(folder: Path) -> pydicom.Dataset:
    """The smallest single-frame synthetic instance (32x32 pixels)."""
    result = generate(folder, studies=6, seed=1, image_size=32, ct_slices=1)
    files = sorted(
        (path for record in result.study_records for path in record.files),
        key=lambda p: p.stat().st_size,
    )
    return pydicom.dcmread(files[0])


def instances(base: pydicom.Dataset, start: int, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` distinct instances numbered from ``start``: (site, bytes)."""
    sites = ("site-a", "site-b", "site-c")
    for n in range(start, start + count):
        study = n // PER_STUDY
        ds = base.copy()
        ds.PatientID = f"BENCH{study // 2:06d}"
        ds.AccessionNumber = f"ACC{study:07d}"
        ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f"study-{study}"])
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f"series-{study}"])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f"instance-{n}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n % PER_STUDY + 1
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        yield sites[study % 3], buffer.getvalue()


def ingest(settings: Settings, base: pydicom.Dataset, start: int, count: int) -> float:
    pipeline = IngestPipeline.from_settings(settings)
    began = time.perf_counter()
    batch: list[Offer] = []
    for site, data in instances(base, start, count):
        batch.append(Offer(data, site, "folder"))
        if len(batch) == BATCH:
            pipeline.ingest_many(batch)
            batch = []
    if batch:
        pipeline.ingest_many(batch)
    return time.perf_counter() - began


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


def run(args: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(args, check=True, env=env, capture_output=True)


def copy_tree(source: Path, target: Path) -> None:
    """rsync -a SOURCE/ TARGET/ (incremental), or cp -a where rsync is missing."""
    if shutil.which("rsync"):
        run(["rsync", "-a", "--delete", f"{source}/", f"{target}/"])
    else:
        target.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", f"{source}/.", str(target)])


def libpq(url: str) -> tuple[dict[str, str], str]:
    parsed = make_url(url)
    env = dict(os.environ)
    for name, value in (
        ("PGHOST", parsed.host),
        ("PGPORT", parsed.port),
        ("PGUSER", parsed.username),
    ):
        if value is not None:
            env[name] = str(value)
    return env, str(parsed.database)


@contextmanager
def postgres_databases(admin_url: str, count: int) -> Iterator[list[str]]:
    import psycopg

    admin = make_url(admin_url).set(drivername="postgresql+psycopg")
    names = [f"medai_bench_backup_{secrets.token_hex(4)}" for _ in range(count)]
    params: dict[str, Any] = {
        "host": admin.host,
        "port": admin.port or 5432,
        "user": admin.username,
        "dbname": admin.database,
        "autocommit": True,
    }
    with psycopg.connect(**params) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [admin.set(database=n).render_as_string(hide_password=False) for n in names]
    finally:
        with psycopg.connect(**params) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench(
    kind: str, root: Path, base: pydicom.Dataset, n: int, urls: list[str] | None
) -> dict[str, Any]:
    home = root / f"{kind}-home"
    url = urls[0] if urls else None
    settings = Settings(home=home, database_url=url)
    init_campaign(load_campaign(REPO / "collection" / "example-campaign.toml"), settings)
    figures: dict[str, Any] = {"database": kind, "instances": n}
    figures["ingest_s"] = ingest(settings, base, 0, n)
    dest = root / f"{kind}-backups"
    figures["medai_first_s"], first = timed(lambda: create_backup(dest, settings))
    more = max(1, n // 100)
    ingest(settings, base, n, more)
    figures["medai_incremental_s"], second = timed(lambda: create_backup(dest, settings))
    figures["medai_incremental_copied"] = second.objects_copied
    figures["medai_first_copied"] = first.objects_copied
    figures["medai_verify_s"], verdict = timed(lambda: verify_backup(dest))
    assert verdict.ok, verdict.problems
    figures["medai_restore_s"], _ = timed(
        lambda: restore_backup(
            dest, root / f"{kind}-restored", database_url=urls[1] if urls else None
        )
    )
    figures["backup_bytes"] = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    if kind == "sqlite":
        tar = root / "home.tar"
        figures["baseline"] = "tar"
        figures["baseline_first_s"], _ = timed(
            lambda: run(["tar", "-cf", str(tar), "-C", str(home), "."])
        )
        figures["baseline_incremental_s"], _ = timed(
            lambda: run(["tar", "-cf", str(tar), "-C", str(home), "."])
        )
        out = root / "untarred"
        out.mkdir()
        figures["baseline_restore_s"], _ = timed(
            lambda: run(["tar", "-xf", str(tar), "-C", str(out)])
        )
    else:
        assert urls is not None
        env, name = libpq(urls[0])
        copy = root / "rsynced-home"
        dump = root / "catalog.pgdump"
        tool = "rsync" if shutil.which("rsync") else "cp -a"
        figures["baseline"] = f"pg_dump + {tool}"

        def dump_and_copy() -> None:
            run(["pg_dump", "-Fc", "-f", str(dump), "-d", name], env)
            copy_tree(home, copy)

        figures["baseline_first_s"], _ = timed(dump_and_copy)
        ingest(settings, base, n + more, more)  # the same 1 % for the incremental rsync
        figures["baseline_incremental_s"], _ = timed(dump_and_copy)
        env2, name2 = libpq(urls[2])

        def restore() -> None:
            run(["pg_restore", "--no-owner", "-d", name2, str(dump)], env2)
            copy_tree(copy, root / "rsync-restored")

        figures["baseline_restore_s"], _ = timed(restore)
    figures["incremental_ratio"] = figures["medai_incremental_s"] / figures["medai_first_s"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    options = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medai-bench-backup-") as folder:
        root = Path(folder)
        base = template(root / "synth")
        results.append(bench("sqlite", root / "s", base, options.instances, None))
        if not options.no_postgres:
            try:
                with postgres_databases(options.postgres_url, 3) as urls:
                    results.append(bench("postgresql", root / "p", base, options.instances, urls))
            except Exception as exc:  # noqa: BLE001 - a missing server skips that half
                print(f"PostgreSQL skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    header = (
        f"{'database':<11}{'instances':>10}{'medai 1st':>11}{'medai incr':>11}{'ratio':>7}"
        f"{'restore':>9}{'verify':>8}  {'baseline':<16}{'1st':>7}{'incr':>7}{'restore':>9}"
    )
    print(header)
    for r in results:
        print(
            f"{r['database']:<11}{r['instances']:>10}{r['medai_first_s']:>10.2f}s"
            f"{r['medai_incremental_s']:>10.2f}s{r['incremental_ratio']:>7.3f}"
            f"{r['medai_restore_s']:>8.2f}s{r['medai_verify_s']:>7.2f}s  {r['baseline']:<16}"
            f"{r['baseline_first_s']:>6.2f}s{r['baseline_incremental_s']:>6.2f}s"
            f"{r['baseline_restore_s']:>8.2f}s"
        )
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
