"""Browsing the collection: QIDO-RS study search at 1M instances, WADO-RS beside Orthanc.

Part 1, QIDO-RS (SQLite and PostgreSQL): a catalog of ``--instances`` instance rows
(default 1,000,000: 10 per series, 2 series per study, 2 studies per patient; 5 % of the
studies CT, 1 % MR, the rest CR/DX; study dates over 5 years) is bulk-inserted as synthetic
catalog rows (no files), then typical study searches go through `medai serve`'s app
in process (key check, search, audit record, JSON), ``--repeat`` times each; it prints the
median and p95 per search and over all (target: every median under 100 ms).

Part 2, WADO-RS: ``--wado`` synthetic 512x512 CT instances (default 300, 3 studies) are
ingested by medai (de-identified, stored) and uploaded to Debian's Orthanc (DICOMweb plugin);
a real `medai serve` and Orthanc then answer the same retrieves over loopback: every study
(multipart application/dicom) ``--rounds`` times, then every instance's frame 1 (bulk,
octet-stream). It prints instances/s and MB/s for each and medai/Orthanc.

    python benchmarks/browse.py [--instances 1000000] [--repeat 20] [--wado 300] [--rounds 3]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test] [--skip-sqlite]
        [--skip-postgres] [--skip-wado] [--keep]

A PostgreSQL database ``medai_bench_<random>`` is created from ``--postgres-url`` (the
server's admin database) and dropped afterwards. The default run takes about 5-8 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
import requests  # noqa: E402
from sqlalchemy import Engine, insert  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from medai.catalog import db  # noqa: E402
from medai.catalog.models import Instance, Patient, Series, Site, Study  # noqa: E402
from medai.config import Settings  # noqa: E402
from medai.serving.keys import create_key  # noqa: E402

PER_SERIES, SERIES_PER_STUDY, STUDIES_PER_PATIENT = 10, 2, 2
BATCH = 20_000
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"


def uid(kind: int, index: int) -> str:
    return f"2.25.{kind}{index:012d}"


def pseudonym(index: int) -> str:
    return f"P{index:08d}BENCH"


def study_kind(index: int) -> str:
    """5 % CT, 1 % MR, the rest CR and DX: rare modalities make EXISTS scans long."""
    slot = index % 100
    return "CT" if slot < 5 else ("MR" if slot == 5 else ("CR" if slot % 2 else "DX"))


def populate(engine: Engine, instances: int) -> int:
    """Bulk-insert the synthetic catalog; returns the number of studies."""
    studies = instances // (PER_SERIES * SERIES_PER_STUDY)
    patients = studies // STUDIES_PER_PATIENT
    rng = random.Random(7)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    first_day = dt.date(2019, 1, 1)
    with engine.begin() as connection:
        connection.execute(insert(Site), [{"id": "site-a", "name": "Site A"}])

        def batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) == BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch

        for batch in batches(
            {"id": p + 1, "pseudonym": pseudonym(p), "first_seen_at": now, "scheme": "v2"}
            for p in range(patients)
        ):
            connection.execute(insert(Patient), batch)
        for batch in batches(
            {
                "id": s + 1,
                "study_uid": uid(1, s),
                "patient_id": s // STUDIES_PER_PATIENT + 1,
                "site_id": "site-a",
                "study_date": first_day + dt.timedelta(days=rng.randrange(5 * 365)),
                "modality": study_kind(s),
                "body_part": "CHEST",
                "first_received_at": now,
            }
            for s in range(studies)
        ):
            connection.execute(insert(Study), batch)
        for batch in batches(
            {
                "id": e + 1,
                "series_uid": uid(2, e),
                "study_id": e // SERIES_PER_STUDY + 1,
                "modality": study_kind(e // SERIES_PER_STUDY),
                "body_part": "CHEST",
                "series_number": e % SERIES_PER_STUDY + 1,
            }
            for e in range(studies * SERIES_PER_STUDY)
        ):
            connection.execute(insert(Series), batch)
        for batch in batches(
            {
                "id": i + 1,
                "sop_instance_uid": uid(3, i),
                "sop_class_uid": CT_IMAGE if study_kind(i // 20) == "CT" else CR_IMAGE,
                "series_id": i // PER_SERIES + 1,
                "site_id": "site-a",
                "modality": study_kind(i // 20),
                "rows": 512,
                "columns": 512,
                "number_of_frames": 1,
                "transfer_syntax_uid": EXPLICIT,
                "store_key": f"{i:064x}",
                "byte_size": 524_288,
                "source": "bench",
                "received_at": now,
            }
            for i in range(studies * SERIES_PER_STUDY * PER_SERIES)
        ):
            connection.execute(insert(Instance), batch)
    # Statistics for the planner; on PostgreSQL also the visibility map that index-only scans
    # need (autovacuum would have written both on a catalog filled over months).
    command = "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(command)
    return studies


def searches(studies: int) -> dict[str, dict[str, str]]:
    """The study searches timed: what a study list in a viewer sends."""
    middle = studies // 2
    return {
        "first page (limit 100)": {"limit": "100"},
        "deep page (offset 40000)": {"limit": "100", "offset": str(min(40_000, studies - 100))},
        "PatientID exact": {"PatientID": pseudonym(middle // 2)},
        "PatientID prefix*": {"PatientID": pseudonym(middle // 2)[:7] + "*"},
        "StudyDate one month": {"StudyDate": "20210301-20210331"},
        "ModalitiesInStudy=CT": {"ModalitiesInStudy": "CT"},
        "MR in one month": {"ModalitiesInStudy": "MR", "StudyDate": "20210301-20210331"},
        "StudyInstanceUID": {"StudyInstanceUID": uid(1, middle)},
        "includefield=all, page 5": {"includefield": "all", "limit": "50", "offset": "200"},
    }


def time_qido(settings: Settings, engine: Engine, studies: int, repeat: int) -> None:
    """Time each search through the app in process (key check, search, audit record, JSON),
    and the catalog search alone."""
    from fastapi.testclient import TestClient

    from medai.serving.app import create_app

    key = create_key(engine, name="bench-steward", role="steward", actor="bench").key
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/dicom+json"}
    app_settings = settings.model_copy(update={"serve_model": ""})
    every: list[float] = []
    with TestClient(create_app(app_settings)) as client:
        for name, params in searches(studies).items():
            timings = []
            found = 0
            for _ in range(repeat + 2):
                start = time.perf_counter()
                response = client.get("/dicomweb/studies", params=params, headers=headers)
                timings.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
                found = len(response.json())
            timings = timings[2:]  # the first two warm the caches
            every += timings
            catalog = catalog_timings(engine, params, repeat)
            print(
                f"  {name:28s} {found:4d} results  median {statistics.median(timings):6.1f} ms"
                f"  p95 {percentile(timings, 95):6.1f} ms   (catalog query alone: median "
                f"{statistics.median(catalog):5.1f} ms)"
            )
    verdict = "OK" if statistics.median(every) < 100 else "OVER TARGET"
    print(
        f"  {'all searches':28s}               median {statistics.median(every):6.1f} ms"
        f"  p95 {percentile(every, 95):6.1f} ms  (target median < 100 ms: {verdict})"
    )


def catalog_timings(engine: Engine, params: dict[str, str], repeat: int) -> list[float]:
    """The search alone (parse, catalog queries, DICOM JSON): no HTTP, key check or audit."""
    from medai.catalog.qido import parse_query, search
    from medai.serving.dicomweb_access import reader

    sessions = reader(engine)
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        with sessions() as session:
            search(session, parse_query("study", list(params.items())))
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    admin = make_url(admin_url)
    name = f"medai_bench_{secrets.token_hex(4)}"
    plain = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def qido_benchmark(label: str, url: str, work: Path, instances: int, repeat: int) -> None:
    settings = Settings(home=work / f"home-{label}", database_url=url)
    engine = db.create_engine_for(url)
    try:
        db.upgrade(engine)
        start = time.perf_counter()
        studies = populate(engine, instances)
        print(
            f"{label}: {instances:,} instances in {studies:,} studies inserted in "
            f"{time.perf_counter() - start:.0f} s; QIDO-RS study searches (in-process app):"
        )
        time_qido(settings, engine, studies, repeat)
    finally:
        engine.dispose()


def timed_get(session: requests.Session, url: str, headers: dict[str, str]) -> int:
    """GET ``url``, reading the body as it streams; returns its size in bytes."""
    size = 0
    with session.get(url, headers=headers, stream=True, timeout=300) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1024 * 1024):
            size += len(chunk)
    return size


def throughput(
    name: str,
    base: str,
    headers: dict[str, str],
    studies: list[tuple[str, list[tuple[str, str]]]],
    rounds: int,
) -> tuple[float, float]:
    """Instances/s of study retrieves and frames/s of per-instance frame retrieves."""
    session = requests.Session()
    session.trust_env = False
    dicom = headers | {"Accept": 'multipart/related; type="application/dicom"'}
    octets = headers | {"Accept": 'multipart/related; type="application/octet-stream"'}
    count = sum(len(instances) for _, instances in studies)
    timed_get(session, f"{base}/studies/{studies[0][0]}", dicom)  # warm up
    start = time.perf_counter()
    size = 0
    for _ in range(rounds):
        for study, _instances in studies:
            size += timed_get(session, f"{base}/studies/{study}", dicom)
    seconds = time.perf_counter() - start
    study_rate = count * rounds / seconds
    start = time.perf_counter()
    for study, instances in studies:
        for series, sop in instances:
            url = f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/1"
            timed_get(session, url, octets)
    frame_rate = count / (time.perf_counter() - start)
    print(
        f"  {name:8s} study retrieve {study_rate:7.1f} instances/s "
        f"({size / seconds / 1e6:6.1f} MB/s); frames/1 per instance {frame_rate:6.1f} frames/s"
    )
    return study_rate, frame_rate


def listing(
    session_get: Callable[[str], list[dict[str, Any]]],
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each study's (series, instance) UIDs, found by QIDO-RS."""
    studies = []
    for study in session_get("/studies"):
        study_uid = study["0020000D"]["Value"][0]
        instances = session_get(f"/studies/{study_uid}/instances?limit=1000")
        studies.append(
            (
                study_uid,
                [(i["0020000E"]["Value"][0], i["00080018"]["Value"][0]) for i in instances],
            )
        )
    return studies


def wado_benchmark(work: Path, count: int, rounds: int) -> None:
    from benchmarks.ingest import make_files
    from medai.collection.outcomes import Offer
    from medai.collection.pipeline import IngestPipeline
    from tests.serving.helpers import ServeProcess
    from tests.utils.campaign import init_example_campaign
    from tests.utils.orthanc import Orthanc

    files = make_files(work / "files", count)
    home = work / "wado-home"
    url = f"sqlite:///{home / 'catalog.db'}"
    os.environ.update({"MEDAI_HOME": str(home), "MEDAI_DATABASE_URL": url})
    settings = Settings(home=home, database_url=url)
    init_example_campaign(settings)
    IngestPipeline.from_settings(settings).ingest_many(
        [Offer(path.read_bytes(), "site-a", "folder") for path in files]
    )
    engine = db.create_engine_for(url)
    key = create_key(engine, name="bench-wado", role="steward", actor="bench").key
    engine.dispose()
    medai_headers = {"Authorization": f"Bearer {key}"}
    print(f"WADO-RS: {count} instances of 512x512 CT, loopback, {rounds} round(s):")
    serve = ServeProcess()
    try:
        with Orthanc(
            aet="BENCH", extra_config={"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        ) as orthanc:
            orthanc.upload_files(files)

            def getter(base: str, headers: dict[str, str]) -> Callable[[str], Any]:
                def get(path: str) -> Any:
                    response = requests.get(base + path, headers=headers, timeout=60)
                    response.raise_for_status()
                    return response.json()

                return get

            medai_base = f"{serve.url}/dicomweb"
            orthanc_base = orthanc.dicomweb_url.rstrip("/")
            medai_rate = throughput(
                "medai",
                medai_base,
                medai_headers,
                listing(getter(medai_base, medai_headers)),
                rounds,
            )
            orthanc_rate = throughput(
                "Orthanc", orthanc_base, {}, listing(getter(orthanc_base, {})), rounds
            )
            print(
                f"  medai/Orthanc: study retrieve {medai_rate[0] / orthanc_rate[0]:.2f}x, "
                f"frames {medai_rate[1] / orthanc_rate[1]:.2f}x"
            )
    finally:
        serve.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=1_000_000, help="catalog instance rows")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each search")
    parser.add_argument("--wado", type=int, default=300, help="instances for the WADO-RS part")
    parser.add_argument("--rounds", type=int, default=3, help="study retrieve rounds")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "MEDAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="PostgreSQL server (its admin database); a scratch database is made on it",
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-wado", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("MEDAI_") and "TEST" not in n]:
        del os.environ[name]  # a developer's own settings must not reach the runs

    work = Path(tempfile.mkdtemp(prefix="medai-browse-"))
    try:
        if not args.skip_sqlite:
            url = f"sqlite:///{work / 'qido.db'}"
            qido_benchmark("SQLite", url, work, args.instances, args.repeat)
        if not args.skip_postgres:
            with postgres_database(args.postgres_url) as url:
                qido_benchmark("PostgreSQL", url, work, args.instances, args.repeat)
        if not args.skip_wado:
            wado_benchmark(work, args.wado, args.rounds)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
