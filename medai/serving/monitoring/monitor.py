"""Sliding windows of the served model's inputs and scores, compared with its reference.

:class:`DriftMonitor` lives in ``app.state.monitor`` while the app serves a model. The
predict route hands it each answered prediction (:meth:`DriftMonitor.submit`): the
study's first header (modality, view position, manufacturer, pixel spacing), the model
inputs (their mean, standard deviation and histogram) and each finding's probability are
written with the prediction's feedback record (``served_predictions``), the records of
the predictions answered meanwhile together, in one transaction, off the request's path
(the feedback route waits for them: :meth:`DriftMonitor.flush`). The windows are
the last ``drift_window`` predictions of the caller's site and of all, read back from the
catalog, so every worker process and a restarted service see the same windows. The
*site* is the edge site of the caller's key when it has one, and the API key's name
otherwise: the service is told nothing else about where a study comes from.

The reference is the one the training run logged with the served version
(:data:`medai.training.reference_features.REFERENCE_ARTIFACT`); a version trained before
it existed has none, and its status is ``unknown`` ("no baseline"), never ``ok``.
:meth:`DriftMonitor.report` compares each window with it (:mod:`.drift`), and the same
report feeds the Prometheus gauges (:class:`DriftCollector`) at each scrape.

A site's window is its last predictions whenever they were made: a site that stopped
sending keeps its last status (until its records pass the retention).

Retention: the records are deleted ``monitoring_retention_days`` after their prediction
unless a clinician gave feedback on it (:func:`.feedback.prune_served`). The monitor does
it where it writes them, after a group of records, at most once an hour per process
(the first prediction after start, then hourly) rather than on every prediction; a sweep
deletes at most :data:`PRUNE_MOST` rows, so the prediction that runs it waits little, and
one that hit that bound (a backlog, e.g. a first sweep) makes the next due after
:data:`PRUNE_CATCH_UP_S` instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medai.collection.key_guard import campaign_pseudonymizer
from medai.collection.pseudonymize import Pseudonymizer
from medai.dicom.metadata import normalize_manufacturer, normalize_view_position
from medai.errors import MedaiError
from medai.serving.group_commit import GroupCommit
from medai.serving.monitoring.drift import (
    STATUSES,
    FeatureDrift,
    Thresholds,
    categorical_drift,
    numeric_drift,
    psi,
    worst,
)
from medai.serving.monitoring.feedback import (
    Served,
    agreement,
    prune_served,
    recent_stats,
    record_served,
)
from medai.training.reference_features import (
    CATEGORICAL,
    HISTOGRAM_EDGES,
    NUMERIC,
    REFERENCE_ARTIFACT,
    REFERENCE_FORMAT,
    category,
    image_features,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from pydicom.dataset import Dataset
    from sqlalchemy import Engine

    from medai.config import Settings

__all__ = ["DriftCollector", "DriftMonitor", "Observation", "observation_of"]

logger = logging.getLogger(__name__)

# A reference that could not be fetched (MLflow down) is asked for again after this.
_RETRY_S = 300.0
# Retention sweeps (see the module docstring): how often, and how much at a time.
PRUNE_INTERVAL_S = 3600.0
PRUNE_CATCH_UP_S = 60.0
PRUNE_BATCH = 500
PRUNE_MOST = 5000
_NO_BASELINE = (
    "no baseline: this version was trained without a monitoring reference; "
    "retrain it (medai train) to get one"
)


def _monotonic() -> float:
    """Seconds of a clock that only goes forward (tests replace it to pass an hour)."""
    return time.monotonic()


def normalize_modality(value: object) -> str | None:
    """Modality as the catalog keeps it (stripped, upper case)."""
    text = "" if value is None else str(value).strip().upper()
    return text or None


class _Model(Protocol):
    name: str
    version: str
    run_id: str


class _Finding(Protocol):
    label: str
    probability: float
    positive: bool


class PredictionLike(Protocol):
    """What :meth:`DriftMonitor.observe` reads of a prediction (a ``StoredPrediction``)."""

    id: str
    owner: str
    source: Dataset

    @property
    def model(self) -> _Model: ...
    @property
    def findings(self) -> Sequence[_Finding]: ...
    @property
    def images(self) -> Any: ...


@dataclass(frozen=True)
class Observation:
    """One prediction as the monitor keeps it: statistics only, nothing identifying."""

    categorical: dict[str, str]
    numeric: dict[str, float]
    histogram: tuple[int, ...]
    scores: dict[str, float]


def _spacing(source: Dataset) -> float | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        if value:
            try:
                return float(value[0])
            except (TypeError, ValueError, IndexError):
                return None
    return None


def observation_of(source: Dataset, images: Any, scores: Mapping[str, float]) -> Observation:
    """The statistics of one prediction: ``source`` header, model inputs ``images``
    (instances first), each finding's study-level probability."""
    means, stds = [], []
    histogram = np.zeros(len(HISTOGRAM_EDGES) - 1, dtype=np.int64)
    for image in np.asarray(images):
        mean, std, counts = image_features(image)
        means.append(mean)
        stds.append(std)
        histogram += counts
    numeric = {"intensity_mean": float(np.mean(means)), "intensity_std": float(np.mean(stds))}
    spacing = _spacing(source)
    if spacing is not None:
        numeric["pixel_spacing"] = spacing
    return Observation(
        # Normalized as the catalog (hence the snapshot's manifest) spells them.
        categorical={
            "modality": category(normalize_modality(source.get("Modality"))),
            "view": category(normalize_view_position(source.get("ViewPosition"))),
            "manufacturer": category(normalize_manufacturer(source.get("Manufacturer"))),
        },
        numeric=numeric,
        histogram=tuple(int(c) for c in histogram),
        scores={label: float(p) for label, p in scores.items()},
    )


def _observation(stats: Mapping[str, Any]) -> Observation:
    return Observation(
        categorical=dict(stats.get("categorical", {})),
        numeric=dict(stats.get("numeric", {})),
        histogram=tuple(stats.get("histogram", ())),
        scores=dict(stats.get("scores", {})),
    )


class DriftMonitor:
    """Records each prediction's statistics; compares the windows with the reference."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.thresholds = Thresholds(
            warn_psi=settings.drift_warn_psi,
            alert_psi=settings.drift_alert_psi,
            p_value=settings.drift_p_value,
            min_samples=settings.drift_min_samples,
        )
        self._references: dict[str, tuple[float, dict[str, Any] | None, str | None]] = {}
        self._lock = threading.Lock()
        # The campaign's pseudonymizer (checked key), loaded on first use; False: none.
        self._pseudonymizer: Pseudonymizer | bool | None = None
        # When the next retention sweep is due (_monotonic()); the first is at once.
        self._next_prune = 0.0
        # The records of answered predictions, written together after their answers.
        self.recorder: GroupCommit[tuple[PredictionLike, str, str]] = GroupCommit(
            self._record, "served prediction records"
        )

    def research_study_uid(self, source: Dataset) -> str | None:
        """The pseudonymous StudyInstanceUID ingest gives ``source``'s study, or None.

        Only in a campaign deployment whose campaign key is readable and checked: an
        inference-only deployment has no research catalog to match, so it keeps None.
        """
        if not self.settings.serve_campaign:
            return None
        with self._lock:
            if self._pseudonymizer is None:
                try:
                    self._pseudonymizer = campaign_pseudonymizer(self.settings, self.engine)
                except MedaiError as exc:
                    logger.warning(
                        "no campaign key: feedback will not carry research study UIDs (%s)",
                        type(exc).__name__,
                    )
                    self._pseudonymizer = False
            pseudonymizer = self._pseudonymizer
        uid = str(source.get("StudyInstanceUID", "") or "").strip()
        if isinstance(pseudonymizer, bool) or not uid:
            return None
        return pseudonymizer.uid(uid)

    # -- recording ---------------------------------------------------------------------

    def submit(self, prediction: PredictionLike, *, site: str, study: str) -> None:
        """Record ``prediction`` soon, after it is answered (call it on the event loop).

        The records of the predictions answered meanwhile are written together, in one
        transaction and off the request's path (:class:`~medai.serving.group_commit.GroupCommit`);
        :meth:`flush` waits for them. A failure is logged, never raised: the prediction
        was answered whatever happens to its monitoring (feedback on it is then refused
        as unknown).
        """
        self.recorder.submit((prediction, site, study))

    async def flush(self) -> None:
        """Wait until the predictions submitted so far are recorded (feedback reads them)."""
        await self.recorder.flush()

    def observe(self, prediction: PredictionLike, *, site: str, study: str) -> None:
        """Record ``prediction`` now, in its own transaction (blocking; never raises)."""
        try:
            self._record([(prediction, site, study)])
        except Exception as exc:
            logger.error(
                "prediction %s could not be monitored: %s", prediction.id, type(exc).__name__
            )

    def _record(self, items: list[tuple[PredictionLike, str, str]]) -> None:
        """Write the records of ``items`` in one transaction, then sweep if one is due."""
        rows = []
        for prediction, site, study in items:
            try:
                rows.append(self._served(prediction, site=site, study=study))
            except Exception as exc:  # one unreadable prediction does not lose the others
                logger.error(
                    "prediction %s could not be monitored: %s", prediction.id, type(exc).__name__
                )
        if rows:
            record_served(self.engine, rows)
        self._prune_if_due()

    def _served(self, prediction: PredictionLike, *, site: str, study: str) -> Served:
        model = prediction.model
        self.reference(model.run_id)  # fetched once per version, before it is needed
        observation = observation_of(
            prediction.source,
            prediction.images,
            {f.label: f.probability for f in prediction.findings},
        )
        return Served(
            prediction_id=prediction.id,
            model=model.name,
            version=model.version,
            study=study,
            site=site,
            owner=prediction.owner,
            findings={
                f.label: {"probability": round(float(f.probability), 6), "positive": f.positive}
                for f in prediction.findings
            },
            stats=asdict(observation),
            research_study_uid=self.research_study_uid(prediction.source),
        )

    def _prune_if_due(self) -> None:
        """Delete expired records without feedback, when a sweep is due (see the docstring)."""
        now = _monotonic()
        with self._lock:
            if now < self._next_prune:
                return
            # Claimed before the sweep: another thread of this process does not start one too.
            self._next_prune = now + PRUNE_INTERVAL_S
        before = dt.datetime.now(dt.UTC) - dt.timedelta(
            days=self.settings.monitoring_retention_days
        )
        try:
            deleted = prune_served(self.engine, before, batch=PRUNE_BATCH, most=PRUNE_MOST)
        except Exception as exc:  # the prediction was recorded; the next sweep tries again
            logger.warning("served predictions could not be pruned: %s", type(exc).__name__)
            return
        if deleted:
            logger.info("pruned %d served prediction record(s) past the retention", deleted)
        if deleted >= PRUNE_MOST:
            with self._lock:
                self._next_prune = min(self._next_prune, _monotonic() + PRUNE_CATCH_UP_S)

    # -- the reference -----------------------------------------------------------------

    def reference(self, run_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """The run's reference and None, or None and why there is none."""
        with self._lock:
            cached = self._references.get(run_id)
        if cached is not None and (cached[1] is not None or time.monotonic() < cached[0]):
            return cached[1], cached[2]
        reference, problem, retry = self._fetch(run_id)
        with self._lock:
            self._references[run_id] = (time.monotonic() + retry, reference, problem)
        return reference, problem

    def _fetch(self, run_id: str) -> tuple[dict[str, Any] | None, str | None, float]:
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = self.settings.resolved_mlflow_tracking_uri
        folder = str(Path(REFERENCE_ARTIFACT).parent)
        try:
            listed = MlflowClient(tracking_uri=uri).list_artifacts(run_id, folder)
            if REFERENCE_ARTIFACT not in {item.path for item in listed}:
                # A version trained before monitoring existed: say so, never "ok".
                return None, _NO_BASELINE, float("inf")
            with tempfile.TemporaryDirectory(prefix="medai-reference-") as tmp:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=uri, dst_path=tmp
                )
                reference = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError:  # JSONDecodeError included
            return None, "no baseline: the monitoring reference is not valid JSON", float("inf")
        except (MlflowException, OSError) as exc:  # MLflow or its store unreachable: retry
            logger.warning("the monitoring reference could not be fetched: %s", type(exc).__name__)
            return (
                None,
                f"the monitoring reference could not be fetched ({type(exc).__name__}); "
                "check MLflow (medai doctor)",
                _RETRY_S,
            )
        if not isinstance(reference, dict) or reference.get("format") != REFERENCE_FORMAT:
            return None, "no baseline: the monitoring reference has an unknown format", float("inf")
        return reference, None, float("inf")

    # -- the report --------------------------------------------------------------------

    def report(self, name: str, version: str, run_id: str) -> dict[str, Any]:
        """The drift of ``version``'s windows (overall and per site) and the feedback."""
        reference, problem = self.reference(run_id)
        rows, by_site = recent_stats(self.engine, name, version, self.settings.drift_window)
        overall = [_observation(row) for row in rows]
        sites = {
            site: [_observation(row) for row in site_rows] for site, site_rows in by_site.items()
        }
        groups = {site: self._group(reference, values) for site, values in sorted(sites.items())}
        total = self._group(reference, overall)
        t = self.thresholds
        return {
            "model": name,
            "version": version,
            "status": total["status"],
            "baseline": reference is not None,
            "baseline_problem": problem,
            "window": self.settings.drift_window,
            "thresholds": {
                "warn_psi": t.warn_psi,
                "alert_psi": t.alert_psi,
                "p_value": t.p_value,
                "min_samples": t.min_samples,
            },
            "overall": total,
            "sites": groups,
            "feedback": agreement(self.engine, name, version),
        }

    def _group(self, reference: dict[str, Any] | None, window: list[Observation]) -> dict[str, Any]:
        group: dict[str, Any] = {"predictions": len(window), "status": "unknown", "features": []}
        if reference is None:
            return group
        inputs, scores = reference["inputs"], reference["scores"]
        t = self.thresholds
        tests = len(CATEGORICAL) + len(NUMERIC) + len(scores)
        features: list[FeatureDrift] = [
            categorical_drift(
                name,
                inputs["categorical"].get(name, {}),
                [o.categorical[name] for o in window],
                t,
                tests,
            )
            for name in CATEGORICAL.values()
        ]
        features += [
            numeric_drift(
                name,
                "input",
                inputs["numeric"].get(name, []),
                [o.numeric[name] for o in window if name in o.numeric],
                t,
                tests,
            )
            for name in NUMERIC
        ]
        features += [
            numeric_drift(
                label,
                "score",
                values,
                [o.scores[label] for o in window if label in o.scores],
                t,
                tests,
            )
            for label, values in scores.items()
        ]
        group["features"] = [asdict(f) for f in features]
        group["status"] = (
            "unknown" if len(window) < t.min_samples else worst([f.status for f in features])
        )
        expected = np.asarray(inputs["histogram"]["counts"], dtype=np.float64)
        observed = np.sum([o.histogram for o in window], axis=0) if window else expected * 0
        group["histogram"] = {
            "edges": list(HISTOGRAM_EDGES),
            "reference": (expected / max(expected.sum(), 1.0)).round(4).tolist(),
            "window": (observed / max(float(np.sum(observed)), 1.0)).round(4).tolist(),
            "psi": psi(expected.tolist(), list(observed)) if window else None,
        }
        return group


class DriftCollector(Collector):
    """The monitor's status, PSIs and feedback agreement as Prometheus gauges, at scrape."""

    def __init__(self, monitor: DriftMonitor, served: Any) -> None:
        self.monitor = monitor
        # A callable answering the served model (name, version, run_id), or None.
        self.served = served

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: collect() runs at scrape only

    def collect(self) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "medai_model_drift_status",
            "Drift status of the served model's window: 0 unknown, 1 ok, 2 warn, 3 drift",
            labels=["model", "version", "site"],
        )
        value = GaugeMetricFamily(
            "medai_model_drift_psi",
            "Population stability index of a feature's window against the training reference",
            labels=["model", "version", "site", "feature"],
        )
        window = GaugeMetricFamily(
            "medai_model_drift_window_predictions",
            "Predictions in the window",
            labels=["model", "version", "site"],
        )
        agree = GaugeMetricFamily(
            "medai_model_feedback_agreement",
            "Share of clinician verdicts agreeing with a finding",
            labels=["model", "version", "finding"],
        )
        served = self.served()
        if served is not None:
            name, version, run_id = served
            try:
                report = self.monitor.report(name, version, run_id)
            except Exception as exc:  # a scrape must not fail for the monitor's sake
                logger.warning("monitoring report failed: %s", type(exc).__name__)
            else:
                groups = {"all": report["overall"], **report["sites"]}
                for site, group in groups.items():
                    labels = [name, version, site]
                    status.add_metric(labels, STATUSES.index(group["status"]))
                    window.add_metric(labels, group["predictions"])
                    for feature in group["features"]:
                        if feature["psi"] is not None:
                            value.add_metric([*labels, feature["feature"]], feature["psi"])
                for finding, entry in report["feedback"].items():
                    agree.add_metric([name, version, finding], entry["agreement"])
        yield from (status, value, window, agree)
