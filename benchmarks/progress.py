"""Campaign progress on a full-size catalog: medai's counters beside a direct scan.

Fills a catalog with N instances (default 1,000,000) across 20 sites and 90 days
(chest radiographs of 2 instances, CT studies of 100, labels on a third of the
radiographs), then prints, for the same catalog:
  * medai  — ``compute_progress`` (the progress counters kept by the pipeline), the
    number behind ``medai campaign status`` and the dashboard;
  * scan   — the straightforward way: GROUP BY over the instance and study rows;
  * dashboard — ``GET /dashboard`` and ``GET /v1/campaign/progress`` through the
    FastAPI app, when the serving part is installed;
and checks that medai's counts equal the scan's. Target: under 0.3 s.

    python benchmarks/progress.py [--n 1000000] [--database-url URL] [--repeat 5]

Without --database-url it runs on SQLite in a temporary folder; pass
``postgresql+psycopg://postgres@127.0.0.1:5432/test`` for PostgreSQL (a new
database ``medai_bench_progress`` is created there and dropped afterwards).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medai.catalog.db import create_engine_for, session_factory, upgrade  # noqa: E402
from medai.catalog.models import (  # noqa: E402
    Campaign,
    Instance,
    LabelCount,
    LabelImport,
    LabelRow,
    Patient,
    ProgressCount,
    Series,
    Site,
    Study,
    StudyLabel,
)
from medai.collection.campaign.definition import CampaignDefinition  # noqa: E402
from medai.collection.campaign.progress import compute_progress  # noqa: E402

SITES = 20
DAYS = 90
START = dt.date(2026, 1, 1)
CT_INSTANCES = 100
CR_INSTANCES = 2
CHUNK = 20_000


def definition() -> CampaignDefinition:
    sites = []
    for index in range(SITES):
        sites.append(
            {
                "id": f"site-{index:02d}",
                "name": f"Hospital {index:02d}",
                "ae_titles": [f"SITE{index:02d}"],
                "targets": [
                    {"modality": "CR", "body_part": "CHEST", "studies": 12_000},
                    {"modality": "CT", "body_part": "CHEST", "studies": 350},
                    {"finding": "nodule", "studies": 600},
                ],
            }
        )
    return CampaignDefinition.model_validate(
        {"name": "Benchmark campaign", "start_date": START, "length_days": DAYS, "sites": sites}
    )


def _chunks(rows: list[dict[str, object]]) -> Iterator[list[dict[str, object]]]:
    for offset in range(0, len(rows), CHUNK):
        yield rows[offset : offset + CHUNK]


def fill(engine: Engine, n_instances: int, seed: int = 0) -> dict[str, int]:
    """Write a consistent catalog: rows, counters and labels as the pipeline would."""
    rng = np.random.default_rng(seed)
    campaign = definition()
    per_site = n_instances // SITES
    ct_studies = int(per_site * 0.6) // CT_INSTANCES
    cr_studies = (per_site - ct_studies * CT_INSTANCES) // CR_INSTANCES
    counts: Counter[tuple[str, dt.date, str, str, str]] = Counter()
    label_counts: Counter[tuple[str, dt.date, str, str, str, str]] = Counter()
    totals = Counter[str]()
    with engine.begin() as conn:
        conn.execute(
            insert(Campaign).values(
                name=campaign.name,
                start_date=START,
                length_days=DAYS,
                definition=campaign.model_dump(mode="json"),
            )
        )
        conn.execute(
            insert(Site),
            [
                {
                    "id": s.id,
                    "name": s.name,
                    "ae_titles": s.ae_titles,
                    "targets": {"items": [t.model_dump(mode="json") for t in s.targets]},
                }
                for s in campaign.sites
            ],
        )
        label_import = conn.execute(
            insert(LabelImport).values(site_id="site-00", sheet_sha256="0" * 64, rows=0, actor="b")
        ).inserted_primary_key
        assert label_import is not None
        import_id = label_import[0]
    next_id = {"patient": 0, "study": 0, "series": 0, "instance": 0, "label": 0}
    for site_index, site in enumerate(campaign.sites):
        # Sites progress at different speeds: some finish early, some are late.
        speed = 0.4 + 0.8 * site_index / (SITES - 1)
        kinds = [("CT", CT_INSTANCES)] * ct_studies + [("CR", CR_INSTANCES)] * cr_studies
        days = np.minimum(rng.random(len(kinds)) ** (1 / speed) * DAYS, DAYS - 1).astype(int)
        patients: list[dict[str, object]] = []
        studies: list[dict[str, object]] = []
        series: list[dict[str, object]] = []
        instances: list[dict[str, object]] = []
        label_rows: list[dict[str, object]] = []
        study_labels: list[dict[str, object]] = []
        for (modality, size), day in zip(kinds, days, strict=True):
            received = dt.datetime.combine(
                START + dt.timedelta(days=int(day)), dt.time(9), dt.UTC
            ) + dt.timedelta(seconds=int(rng.integers(0, 36_000)))
            for name in ("patient", "study", "series"):
                next_id[name] += 1
            patients.append({"id": next_id["patient"], "pseudonym": f"P{next_id['patient']:016d}"})
            studies.append(
                {
                    "id": next_id["study"],
                    "study_uid": f"2.25.1{next_id['study']:012d}",
                    "patient_id": next_id["patient"],
                    "site_id": site.id,
                    "modality": modality,
                    "body_part": "CHEST",
                    "first_received_at": received,
                    "last_received_at": received,
                }
            )
            series.append(
                {
                    "id": next_id["series"],
                    "series_uid": f"2.25.2{next_id['series']:012d}",
                    "study_id": next_id["study"],
                    "modality": modality,
                    "body_part": "CHEST",
                }
            )
            for _ in range(size):
                next_id["instance"] += 1
                instances.append(
                    {
                        "sop_instance_uid": f"2.25.3{next_id['instance']:012d}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                        "series_id": next_id["series"],
                        "site_id": site.id,
                        "modality": modality,
                        "body_part": "CHEST",
                        "number_of_frames": 1,
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "store_key": f"{next_id['instance']:064x}",
                        "byte_size": 200_000,
                        "source": "c-store",
                        "received_at": received,
                    }
                )
            key = (site.id, received.date(), modality, "CHEST")
            counts[(*key, "studies")] += 1
            counts[(*key, "instances")] += size
            counts[(*key, "bytes")] += size * 200_000
            if modality == "CR" and rng.random() < 0.33:
                next_id["label"] += 1
                findings = {f: int(rng.random() < 0.1) for f in ("nodule", "effusion")}
                label_rows.append(
                    {
                        "id": next_id["label"],
                        "import_id": import_id,
                        "site_id": site.id,
                        "row_number": next_id["label"],
                        "ref_kind": "accession",
                        "ref": f"{next_id['label']:032x}",
                        "findings": findings,
                        "study_id": next_id["study"],
                        "status": "matched",
                    }
                )
                label_key = (site.id, received.date(), modality, "CHEST")
                label_counts[(*label_key, "", "labelled")] += 1
                for finding, value in findings.items():
                    label_counts[(*label_key, finding, "labelled")] += 1
                    label_counts[(*label_key, finding, "positives")] += value
                    study_labels.append(
                        {
                            "study_id": next_id["study"],
                            "site_id": site.id,
                            "finding": finding,
                            "value": value,
                            "label_row_id": next_id["label"],
                            "conflict": False,
                        }
                    )
        with engine.begin() as conn:
            for model, rows in (
                (Patient, patients),
                (Study, studies),
                (Series, series),
                (Instance, instances),
                (LabelRow, label_rows),
                (StudyLabel, study_labels),
            ):
                for chunk in _chunks(rows):
                    conn.execute(insert(model), chunk)
        totals["instances"] += len(instances)
        totals["studies"] += len(studies)
        print(f"  filled {site.id}: {len(studies)} studies, {len(instances)} instances", end="\r")
    rows_by_key: dict[tuple[str, dt.date, str, str], dict[str, object]] = {}
    for (site_id, day, modality, body_part, field), value in counts.items():
        row = rows_by_key.setdefault(
            (site_id, day, modality, body_part),
            {
                "site_id": site_id,
                "day": day,
                "modality": modality,
                "body_part": body_part,
                "studies": 0,
                "instances": 0,
                "bytes": 0,
            },
        )
        row[field] = value
    label_rows_by_key: dict[tuple[str, dt.date, str, str, str], dict[str, object]] = {}
    for (site_id, day, modality, body_part, finding, field), value in label_counts.items():
        row = label_rows_by_key.setdefault(
            (site_id, day, modality, body_part, finding),
            {
                "site_id": site_id,
                "day": day,
                "modality": modality,
                "body_part": body_part,
                "finding": finding,
                "labelled": 0,
                "positives": 0,
            },
        )
        row[field] = value
    with engine.begin() as conn:
        conn.execute(insert(ProgressCount), list(rows_by_key.values()))
        conn.execute(insert(LabelCount), list(label_rows_by_key.values()))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    print()
    return dict(totals)


def scan_progress(engine: Engine) -> dict[str, tuple[int, int]]:
    """The direct way: count studies and instances per site from the rows themselves."""
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        instances = dict(
            session.execute(
                select(Instance.site_id, func.count()).group_by(Instance.site_id)
            ).all()
        )
        studies = dict(
            session.execute(select(Study.site_id, func.count()).group_by(Study.site_id)).all()
        )
        session.execute(
            select(Study.site_id, Study.modality, Study.body_part, func.count())
            .join(StudyLabel, StudyLabel.study_id == Study.id)
            .where(StudyLabel.value == 1)
            .group_by(Study.site_id, Study.modality, Study.body_part)
        ).all()
    return {site: (int(studies[site]), int(instances[site])) for site in studies}


def medai_progress(engine: Engine) -> dict[str, tuple[int, int]]:
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        report = compute_progress(session, today=START + dt.timedelta(days=DAYS - 1))
    return {s.site: (s.studies, s.instances) for s in report.sites}


def timed(label: str, repeat: int, call: Callable[[], object]) -> tuple[float, object]:
    call()  # warm the caches once, as a running service would have them
    times = []
    result: object = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"  {label:<34} median {median * 1000:8.1f} ms   (min {min(times) * 1000:.1f} ms)")
    return median, result


def dashboard_timers(engine_url: str, home: Path) -> list[tuple[str, Callable[[], object]]]:
    """Requests through the FastAPI app (in process), when medai.serving has the dashboard."""
    try:
        from fastapi.testclient import TestClient

        from medai.serving.app import create_app
        from medai.serving.keys import create_key
    except ImportError as exc:
        print(f"  (dashboard not timed: {exc})")
        return []
    from medai.config import Settings

    settings = Settings(home=home, database_url=engine_url)
    engine = create_engine_for(engine_url)
    key = create_key(engine, name="bench-steward", role="steward").key
    from medai.serving.dashboard import COOKIE

    client = TestClient(create_app(settings))
    client.cookies.set(COOKIE, key)  # the dashboard's sign-in cookie
    headers = {"Authorization": f"Bearer {key}"}
    timers: list[tuple[str, Callable[[], object]]] = []
    for path in ("/v1/campaign/progress", "/dashboard"):
        if client.get(path, headers=headers, follow_redirects=False).status_code == 200:
            timers.append((f"GET {path}", lambda p=path: client.get(p, headers=headers)))
        else:
            print(f"  ({path} not available)")
    return timers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="instances in the catalog")
    parser.add_argument("--database-url", help="PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="medai-bench-progress-") as tmp:
        home = Path(tmp)
        admin = None
        if args.database_url:
            admin = create_engine_for(args.database_url).execution_options(
                isolation_level="AUTOCOMMIT"
            )
            with admin.connect() as conn:
                conn.execute(text("DROP DATABASE IF EXISTS medai_bench_progress WITH (FORCE)"))
                conn.execute(text("CREATE DATABASE medai_bench_progress"))
            url = (
                make_url(args.database_url)
                .set(database="medai_bench_progress")
                .render_as_string(hide_password=False)
            )
        else:
            url = f"sqlite:///{home / 'catalog.db'}"
        try:
            engine = create_engine_for(url)
            upgrade(engine)
            print(f"filling {engine.dialect.name} with {args.n} instances ...")
            start = time.perf_counter()
            totals = fill(engine, args.n)
            print(
                f"  {totals['instances']} instances, {totals['studies']} studies "
                f"in {time.perf_counter() - start:.0f} s"
            )
            print(f"progress of {SITES} sites over {DAYS} days ({engine.dialect.name}, "
                  f"{os.cpu_count()} cores):")
            medai_time, ours = timed("medai compute_progress", args.repeat,
                                     lambda: medai_progress(engine))
            scan_time, theirs = timed("scan GROUP BY over the rows", args.repeat,
                                      lambda: scan_progress(engine))
            assert ours == theirs, "counters disagree with the rows"
            print(f"  counts agree; medai is {scan_time / medai_time:.0f}x faster than the scan")
            for label, call in dashboard_timers(url, home):
                timed(label, args.repeat, call)
            engine.dispose()
        finally:
            if admin is not None:
                with admin.connect() as conn:
                    conn.execute(text("DROP DATABASE IF EXISTS medai_bench_progress WITH (FORCE)"))


if __name__ == "__main__":
    main()
