"""Folder-import throughput: medai's whole pipeline beside its peers, on the same files.

Prints, in one run, files/s for:
  * medai   — `medai collect import` (parse, validate, de-identify, pseudonymize, store, catalog)
  * pydicom — the floor: a plain single-process dcmread + dcmwrite loop
  * dicognito — a widely used DICOM anonymizer (dcmread + anonymize + dcmwrite, one process)
and the peak RSS of the largest medai process for N and (with --memory) 5N files.

    python benchmarks/ingest.py [--n 2000] [--workers 0] [--memory] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]


def make_files(folder: Path, count: int) -> list[Path]:
    """``count`` 512x512 CT-like slices, 50 per series, 2 series per patient."""
    from medai.dicom.synth import make_ct_slice

    folder.mkdir(parents=True, exist_ok=True)
    template = make_ct_slice(rows=512, columns=512, seed=1)
    paths = []
    for index in range(count):
        ds = template.copy()
        series, patient = index // 50, index // 100
        ds.PatientID = f"BENCH{patient:06d}"
        ds.PatientName = f"BENCH^PATIENT{patient}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study-{patient}"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series-{series}"])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"sop-{index}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index % 50 + 1
        path = folder / f"{index:07d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def pydicom_floor(paths: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.save_as(out / path.name, enforce_file_format=True)
    return len(paths) / (time.perf_counter() - start)


def dicognito_rate(paths: list[Path], out: Path) -> float | None:
    try:
        from dicognito.anonymizer import Anonymizer
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    anonymizer = Anonymizer()
    start = time.perf_counter()
    for path in paths:
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / path.name, enforce_file_format=True)
    return len(paths) / (time.perf_counter() - start)


def medai_import(
    folder: Path, home: Path, workers: int, database_url: str | None
) -> tuple[float, int]:
    """Run `medai collect import` in a child process; returns files/s and its peak RSS (KiB)."""
    env = {**os.environ, "MEDAI_HOME": str(home), "COLUMNS": "200"}
    if database_url:
        env["MEDAI_DATABASE_URL"] = database_url
    medai = [sys.executable, "-m", "medai.cli"]
    campaign = REPO / "collection" / "example-campaign.toml"
    subprocess.run(
        [*medai, "campaign", "init", str(campaign)], env=env, check=True, capture_output=True
    )
    count = sum(1 for _ in folder.iterdir())
    # A fresh wrapper process, so RUSAGE_CHILDREN covers this import (and its workers) alone.
    wrapper = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True); "
        "print(done.stdout); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper,
            *medai,
            "collect",
            "import",
            str(folder),
            "--site",
            "site-a",
            "-j",
            str(workers),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    # The import's own figure (walk, worker start, every file) is the one compared with
    # the in-process loops below; the command's wall time adds interpreter start-up.
    match = re.search(r"(\d+) inputs in ([\d.]+) s", done.stdout)
    assert match, done.stdout
    imported, seconds = int(match.group(1)), float(match.group(2))
    assert imported == count, (imported, count)
    print(
        f"medai collect import: {seconds:.1f} s for {count} files "
        f"({elapsed:.1f} s with interpreter start-up)"
    )
    return count / seconds, int(done.stdout.strip().splitlines()[-1])


def reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="number of 512x512 files")
    parser.add_argument("--workers", type=int, default=0, help="medai import workers (0: cores)")
    parser.add_argument("--memory", action="store_true", help="also import 5N files for peak RSS")
    parser.add_argument(
        "--database-url",
        default=None,
        help="catalog URL (default SQLite); a PostgreSQL database is emptied first",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medai-bench-"))
    try:
        print(f"generating {args.n} 512x512 CT-like files in {work} ...", flush=True)
        paths = make_files(work / "in", args.n)
        mib = sum(p.stat().st_size for p in paths) / 2**20
        print(f"{len(paths)} files, {mib:.0f} MiB; {os.cpu_count()} CPU cores\n")

        # Each tool starts with no dirty pages left by the one before: the writeback of
        # gigabytes written earlier would otherwise stall the fsyncs medai makes.
        os.sync()
        floor = pydicom_floor(paths, work / "pydicom-out")
        os.sync()
        dicognito = dicognito_rate(paths, work / "dicognito-out")
        os.sync()
        if args.database_url and args.database_url.startswith("postgresql"):
            reset_postgres(args.database_url)
        medai, rss = medai_import(work / "in", work / "home", args.workers, args.database_url)

        catalog = (
            "PostgreSQL" if args.database_url and "postgres" in args.database_url else "SQLite"
        )
        print(f"{'tool':<44}{'files/s':>10}")
        print(f"{'medai collect import (full pipeline, ' + catalog + ')':<44}{medai:>10.1f}")
        print(f"{'pydicom read+write floor (1 process)':<44}{floor:>10.1f}")
        if dicognito is None:
            print(f"{'dicognito (not installed: pip install dicognito)':<44}{'-':>10}")
        else:
            print(f"{'dicognito read+anonymize+write (1 process)':<44}{dicognito:>10.1f}")
            print(f"\nmedai / dicognito = {medai / dicognito:.2f}x (target >= 3x)")
        print(f"medai / pydicom floor = {medai / floor:.2f}x (target >= 1x)")
        print(f"peak RSS of the largest medai process, N={args.n}: {rss / 1024:.0f} MiB")

        if args.memory:
            big = args.n * 5
            print(f"\ngenerating {big} files for the memory check ...", flush=True)
            shutil.rmtree(work / "pydicom-out", ignore_errors=True)
            shutil.rmtree(work / "dicognito-out", ignore_errors=True)
            make_files(work / "in5", big)
            os.sync()
            if args.database_url and args.database_url.startswith("postgresql"):
                reset_postgres(args.database_url)
            rate5, rss5 = medai_import(
                work / "in5", work / "home5", args.workers, args.database_url
            )
            print(
                f"N={big}: {rate5:.1f} files/s, "
                f"peak RSS of the largest process {rss5 / 1024:.0f} MiB"
                f" (N={args.n}: {rss / 1024:.0f} MiB)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
