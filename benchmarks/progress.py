"""Campaign progress: the pipeline's counters checked against the rows, and what they cost.

Synthetic studies of the example campaign's three sites go through the real ingest pipeline
(``IngestPipeline.ingest_many``, batches of 16 as ``medai collect import``), spread over the
campaign's 90 days by the pipeline's clock, into fresh catalogs with the progress counters
(as medai runs) and without (their update replaced by a no-op), in alternating rounds. It
prints both ingest rates and what the counter update takes per transaction and per instance.

On the catalog with counters it then computes the campaign's progress two ways: ``medai`` —
``compute_progress``, which reads the counters (``medai campaign status``, the dashboard, the
export) — and ``scan`` — the same per-site figures recomputed from the instance, series and
study rows (studies, instances, bytes, studies of the last 7 days, latest day, each
modality/body-part target; finding targets need labels and are not exercised). It checks the
counter rows against the rows grouped the same way and the report against the scan: the
pipeline wrote the counters, this script only reads them, so the check can fail. Read times
are printed for both; the scan computes fewer figures than the report, so its speed-up is a
lower bound, and it grows with the catalog (the counters are a few rows per site, day and kind).

    python benchmarks/progress.py [--studies 3000] [--ct-slices 20] [--rounds 3]
                                  [--database-url postgresql+psycopg://postgres@127.0.0.1/test]

SQLite in a temporary folder by default; on PostgreSQL it creates databases named
``medai_bench_progress_*`` on the server and drops them afterwards. (Slightly over 400 lines:
one self-contained script, as every benchmark here is.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medai.catalog.db import create_engine_for, session_factory  # noqa: E402
from medai.catalog.models import Instance, ProgressCount, Series, Study  # noqa: E402
from medai.collection.campaign.definition import CampaignDefinition, load_campaign  # noqa: E402
from medai.collection.campaign.progress import compute_progress  # noqa: E402
from medai.collection.campaign.setup import init_campaign  # noqa: E402
from medai.collection.counters import ProgressCounters  # noqa: E402
from medai.collection.outcomes import Offer  # noqa: E402
from medai.collection.pipeline import IngestPipeline  # noqa: E402
from medai.config import Settings  # noqa: E402
from medai.dicom.synth import generate  # noqa: E402

START = dt.date(2026, 1, 1)
DAYS = 90
TODAY = START + dt.timedelta(days=DAYS - 1)
BATCH = 16  # the folder import's batch size
WINDOW_DAYS = 7  # compute_progress's rate window

Figures = dict[str, dict[str, Any]]
# (site, day, modality, body part) -> (studies, instances, bytes)
Counts = dict[tuple[str, dt.date, str, str], tuple[int, int, int]]
T = TypeVar("T")


def campaign() -> CampaignDefinition:
    example = load_campaign(REPO / "collection" / "example-campaign.toml")
    return example.model_copy(update={"start_date": START, "length_days": DAYS})


def arrivals(
    folder: Path, definition: CampaignDefinition, studies: int, ct_slices: int
) -> list[tuple[int, str, list[bytes]]]:
    """Synthetic studies as (campaign day, site, instance bytes), in order of arrival."""
    sites = [site.id for site in definition.sites]
    result = generate(
        folder, studies=studies, seed=0, sites=sites, image_size=32, ct_slices=ct_slices
    )
    rng = np.random.default_rng(0)
    planned = []
    for record in result.study_records:
        # Sites progress at different speeds: the last one sends most of its studies late.
        speed = 1.5 - sites.index(record.site) / max(1, len(sites) - 1)
        day = min(DAYS - 1, int(rng.random() ** (1 / speed) * DAYS))
        planned.append((day, record.site, [path.read_bytes() for path in record.files]))
    planned.sort(key=lambda item: item[0])
    return planned


@dataclass
class Ingest:
    seconds: float = 0.0
    instances: int = 0
    counter_seconds: float = 0.0
    counter_calls: int = 0


@contextmanager
def counters_measured(keep: bool, figures: Ingest) -> Iterator[None]:
    """Time the pipeline's counter update (``ProgressCounters.write``), or (keep=False) skip it."""
    real = ProgressCounters.write

    def timed(self: ProgressCounters, session: Session) -> None:
        start = time.perf_counter()
        real(self, session)
        figures.counter_seconds += time.perf_counter() - start
        figures.counter_calls += 1

    def skipped(self: ProgressCounters, session: Session) -> None:
        figures.counter_calls += 1

    ProgressCounters.write = timed if keep else skipped  # type: ignore[method-assign]
    try:
        yield
    finally:
        ProgressCounters.write = real  # type: ignore[method-assign]


def ingest(
    settings: Settings,
    definition: CampaignDefinition,
    planned: list[tuple[int, str, list[bytes]]],
    *,
    counters: bool,
) -> Ingest:
    """Set up the campaign in ``settings``' catalog and ingest every planned study."""
    init_campaign(definition, settings)
    pipeline = IngestPipeline.from_settings(settings)
    now = [dt.datetime.combine(START, dt.time(8), dt.UTC)]
    pipeline.clock = lambda: now[0]
    figures = Ingest()
    offers: list[Offer] = []

    def flush() -> None:
        start = time.perf_counter()
        outcomes = pipeline.ingest_many(offers)
        figures.seconds += time.perf_counter() - start
        assert all(o.kind == "stored" for o in outcomes), {o.kind for o in outcomes}
        figures.instances += len(offers)
        offers.clear()

    with counters_measured(counters, figures):
        for day, site, instances in planned:
            arrived = dt.datetime.combine(START + dt.timedelta(days=day), dt.time(8), dt.UTC)
            if arrived.date() != now[0].date() and offers:
                flush()
            now[0] = max(now[0], arrived) + dt.timedelta(seconds=1)
            for data in instances:
                offers.append(Offer(data, site, "folder"))
                if len(offers) == BATCH:
                    flush()
        if offers:
            flush()
    pipeline.engine.dispose()
    return figures


def _utc_day(engine: Engine, column: Any) -> Any:
    # PostgreSQL's date() follows the session's time zone; the counters use UTC days.
    if engine.dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


def _matches(target: Any, modality: str, body_part: str) -> bool:
    return (target.modality is None or target.modality == modality) and (
        target.body_part is None or target.body_part == body_part
    )


def scan_counts(engine: Engine) -> Counts:
    """Studies, instances and bytes per site, UTC day, modality and body part, from the rows.

    A study counts on the day its first instance was received; modality and body part are
    the study's for studies and each instance's own for instances, ``""`` when unknown.
    """
    first = (
        select(Series.study_id, func.min(Instance.received_at).label("first"))
        .join(Instance, Instance.series_id == Series.id)
        .group_by(Series.study_id)
        .subquery()
    )
    study_day = _utc_day(engine, first.c.first)
    s_modality, s_part = func.coalesce(Study.modality, ""), func.coalesce(Study.body_part, "")
    day = _utc_day(engine, Instance.received_at)
    i_modality = func.coalesce(Instance.modality, "")
    i_part = func.coalesce(Instance.body_part, "")
    counts: Counts = {}
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        for site, modality, part, on, n in session.execute(
            select(Study.site_id, s_modality, s_part, study_day, func.count())
            .join(first, first.c.study_id == Study.id)
            .group_by(Study.site_id, s_modality, s_part, study_day)
        ):
            key = (site, dt.date.fromisoformat(str(on)), modality, part)
            counts[key] = (int(n), 0, 0)
        for site, modality, part, on, n, size in session.execute(
            select(
                Instance.site_id,
                i_modality,
                i_part,
                day,
                func.count(),
                func.sum(Instance.byte_size),
            ).group_by(Instance.site_id, i_modality, i_part, day)
        ):
            key = (site, dt.date.fromisoformat(str(on)), modality, part)
            counts[key] = (counts.get(key, (0, 0, 0))[0], int(n), int(size))
    return counts


def counter_rows(engine: Engine) -> Counts:
    """The counter rows the pipeline wrote, in the same shape."""
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        rows = session.execute(
            select(ProgressCount).where(
                (ProgressCount.studies != 0) | (ProgressCount.instances != 0)
            )
        ).scalars()
        return {
            (r.site_id, r.day, r.modality, r.body_part): (r.studies, r.instances, r.bytes)
            for r in rows
        }


def scan_figures(engine: Engine, definition: CampaignDefinition) -> Figures:
    """The from-scratch way: ``compute_progress``'s per-site figures from the rows."""
    counts = scan_counts(engine)
    since = TODAY - dt.timedelta(days=WINDOW_DAYS - 1)
    figures: Figures = {}
    for site in definition.sites:
        mine = [(on, m, b, n) for (s, on, m, b), n in counts.items() if s == site.id]
        targets = {}
        for target in site.targets:
            if target.finding is not None:
                continue
            matching = [n for _, m, b, n in mine if _matches(target, m, b)]
            targets[(target.modality, target.body_part, "studies")] = sum(n[0] for n in matching)
            if target.instances is not None:
                targets[(target.modality, target.body_part, "instances")] = sum(
                    n[1] for n in matching
                )
        figures[site.id] = {
            "studies": sum(n[0] for *_, n in mine),
            "instances": sum(n[1] for *_, n in mine),
            "bytes": sum(n[2] for *_, n in mine),
            "studies_7d": sum(n[0] for on, _, _, n in mine if since <= on <= TODAY),
            "last_received": max((on for on, _, _, n in mine if n[0]), default=None),
            "targets": targets,
        }
    return figures


def medai_figures(engine: Engine) -> Figures:
    """The same figures from ``compute_progress``, which reads the counters."""
    with session_factory(engine.execution_options(sqlite_begin="DEFERRED"))() as session:
        report = compute_progress(session, today=TODAY)
    return {
        site.site: {
            "studies": site.studies,
            "instances": site.instances,
            "bytes": site.bytes,
            "studies_7d": site.studies_7d,
            "last_received": site.last_received,
            "targets": {
                (t.modality, t.body_part, t.unit): t.collected
                for t in site.targets
                if t.finding is None
            },
        }
        for site in report.sites
    }


def timed(label: str, repeat: int, call: Callable[[], T]) -> tuple[float, T]:
    result = call()  # warm the caches once, as a running service would have them
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"  {label:<36} median {median * 1000:8.2f} ms   (min {min(times) * 1000:.2f} ms)")
    return median, result


def show_differences(counted: Mapping[Any, object], scanned: Mapping[Any, object]) -> None:
    for key in sorted(set(counted) | set(scanned), key=str):
        if counted.get(key) != scanned.get(key):
            print(f"  {key}: counters {counted.get(key)}, rows {scanned.get(key)}")


class Catalogs:
    """Fresh, empty catalogs on SQLite (files under ``home``) or a PostgreSQL server."""

    def __init__(self, server: str | None, home: Path) -> None:
        self.home = home
        self.admin = (
            create_engine_for(server).execution_options(isolation_level="AUTOCOMMIT")
            if server
            else None
        )
        self.server = server
        self.made: list[str] = []

    def fresh(self, name: str) -> str:
        """The URL of a new empty catalog ``name`` (an older one of that name is dropped)."""
        if self.admin is None or self.server is None:
            path = self.home / f"{name}.db"
            path.unlink(missing_ok=True)
            return f"sqlite:///{path}"
        database = f"medai_bench_progress_{name}"
        with self.admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {database}"))
        self.made.append(database)
        return make_url(self.server).set(database=database).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if self.admin is not None:
            with self.admin.connect() as conn:
                for database in set(self.made):
                    conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            self.admin.dispose()


def main() -> None:
    # The synthetic JPEG pixel data trips a pydicom heuristic; the tests silence it too.
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=3000, help="synthetic studies to ingest")
    parser.add_argument("--ct-slices", type=int, default=20, help="instances per CT study")
    parser.add_argument("--database-url", help="PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--repeat", type=int, default=5, help="timed reads of each kind")
    parser.add_argument("--rounds", type=int, default=3, help="ingests with and without counters")
    args = parser.parse_args()
    definition = campaign()

    with tempfile.TemporaryDirectory(prefix="medai-bench-progress-") as tmp:
        home = Path(tmp)
        planned = arrivals(home / "incoming", definition, args.studies, args.ct_slices)
        catalogs = Catalogs(args.database_url, home)
        try:
            # A throwaway ingest first, so neither timed run pays the first-use costs
            # (imports, codecs, the database file's creation).
            warm = Settings(home=home / "warm-up", database_url=catalogs.fresh("warm"))
            ingest(warm, definition, planned[:BATCH], counters=True)
            # Alternating rounds, best of each: the ingest difference is small beside the
            # noise of a shared machine.
            runs: dict[bool, list[Ingest]] = {False: [], True: []}
            urls: dict[bool, str] = {}
            for round_ in range(args.rounds):
                for keep in (False, True) if round_ % 2 == 0 else (True, False):
                    # Each round replaces the previous round's catalog of the same kind.
                    name = "counted" if keep else "plain"
                    urls[keep] = catalogs.fresh(name)
                    settings = Settings(home=home / f"{name}-{round_}", database_url=urls[keep])
                    runs[keep].append(ingest(settings, definition, planned, counters=keep))
            counted_url = urls[True]
            counted = min(runs[True], key=lambda run: run.seconds)
            plain = min(runs[False], key=lambda run: run.seconds)
            dialect = make_url(counted_url).get_backend_name()
            print(
                f"ingest of {counted.instances} instances in {len(planned)} studies, "
                f"{len(definition.sites)} sites, {DAYS} days ({dialect}, batches of {BATCH}, "
                f"best of {args.rounds}):"
            )
            for label, run in (("with counters", counted), ("without counters", plain)):
                print(
                    f"  {label:<18} {run.instances / run.seconds:8.1f} instances/s "
                    f"({run.seconds:.2f} s)"
                )
            upsert = counted.counter_seconds
            print(
                f"  counter upsert (measured inside the run with counters): {upsert * 1000:.0f} ms"
                f" = {upsert / counted.counter_calls * 1000:.2f} ms per transaction "
                f"({counted.counter_calls}), {upsert / counted.instances * 1e6:.0f} µs per "
                f"instance, {upsert / counted.seconds:.1%} of the ingest time"
            )
            print(
                f"  ingest time with minus without counters: "
                f"{counted.seconds - plain.seconds:+.2f} s (includes run-to-run noise)"
            )

            engine = create_engine_for(counted_url)
            print(f"progress of {len(definition.sites)} sites on day {DAYS} ({dialect}):")
            medai_time, ours = timed(
                "medai compute_progress (counters)", args.repeat, lambda: medai_figures(engine)
            )
            scan_time, theirs = timed(
                "scan of the rows (from scratch)",
                args.repeat,
                lambda: scan_figures(engine, definition),
            )
            counters, rows = counter_rows(engine), scan_counts(engine)
            engine.dispose()
            if counters != rows:
                show_differences(counters, rows)
                raise SystemExit("the counter rows disagree with the rows they count")
            if ours != theirs:
                show_differences(ours, theirs)
                raise SystemExit("the progress report disagrees with the rows")
            print(
                f"  the {len(counters)} counter rows equal the rows grouped by site, day, "
                "modality and body part, and the report's figures equal the scan's;"
            )
            print(
                f"  speed-up of reading the counters over the scan: {scan_time / medai_time:.2f}x"
            )
        finally:
            catalogs.drop_all()


if __name__ == "__main__":
    main()
