"""Study keys: the edge gives the centre what its label sheets find edge-forwarded studies by.

The edge removes the accession number and the patient's ID before anything leaves the
hospital, but computes their keyed hashes first (the same campaign key as the centre). Once
the centre has a study's instances the edge posts them, from its outbox so that a failed post
is tried again; the site's label sheet, imported at the centre, then finds the study.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import select

from medai.audit import actors
from medai.catalog.db import create_engine_for, session_factory
from medai.catalog.models import LabelRow, Study, StudyLabel
from medai.collection.labels import import_label_sheet
from medai.config import Settings
from medai.dicom.multipart import check_content_type, split_multipart
from medai.dicom.synth import SynthResult, generate
from medai.edge.forwarder import STUDY_KEYS_PATH, Forwarder
from medai.edge.gateway import Gateway, GatewayOptions
from medai.edge.kit import init_edge, load_edge_config, open_kit, write_kit
from medai.edge.outbox import Outbox, outbox_path
from medai.store import ObjectStore
from tests.edge.helpers import ct_instances, ingest
from tests.edge.test_forwarder import stow_answer
from tests.serving.helpers import ServeProcess
from tests.utils.campaign import init_example_campaign

PASSPHRASE = "correct horse battery staple"


def _catalog_keys(settings: Settings) -> dict[str, tuple[str | None, str | None]]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.execute(select(Study.study_uid, Study.accession_key, Study.patient_key))
            return {r.study_uid: (r.accession_key, r.patient_key) for r in rows}
    finally:
        engine.dispose()


def _uids_in(request: httpx.Request) -> list[str]:
    boundary, _ = check_content_type(request.headers["content-type"])
    return [
        str(pydicom.dcmread(io.BytesIO(p.data), stop_before_pixels=True).SOPInstanceUID)
        for p in split_multipart(request.read(), boundary)
    ]


# -- the outbox and the forwarder, against a scripted centre ------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_keys_are_posted_once_the_centre_holds_the_study_and_retried_after_a_failure(
    settings: Settings,
) -> None:
    init_example_campaign(settings)
    ingest(settings, ct_instances(4, tag="keys", studies=2))
    engine = create_engine_for(settings.resolved_database_url)
    outbox = Outbox(outbox_path(settings.resolved_home))
    outbox.fill(engine)
    engine.dispose()
    keys = _catalog_keys(settings)  # what the edge's pipeline computed
    assert len(keys) == 2 and all(a and p for a, p in keys.values())
    assert outbox.study_keys_waiting() == 2
    assert outbox.pending_study_keys() == []  # nothing at the centre yet: nothing to post

    posts: list[dict[str, Any]] = []
    keys_status = [503]

    def centre(request: httpx.Request) -> httpx.Response:
        if request.url.path == STUDY_KEYS_PATH:
            posts.append(json.loads(request.read()))
            status = keys_status.pop(0) if keys_status else 200
            if status != 200:
                return httpx.Response(status, json={"detail": "busy"}, headers={"Retry-After": "4"})
            return httpx.Response(200, json={"site": "site-a", "updated": 2, "conflicts": 0})
        uids = _uids_in(request)
        return httpx.Response(200, json=stow_answer(uids))

    client = httpx.Client(base_url="http://centre.test", transport=httpx.MockTransport(centre))
    store = ObjectStore(settings.resolved_store_dir)
    forwarder = Forwarder(outbox, store, client, "site-a", batch_instances=2, backoff_max=5.0)
    # The first batch (the first instance of each study) puts both studies at the centre.
    assert forwarder.send_batch(outbox.next_batch(max_instances=2, max_bytes=10**9)).ok
    assert {uid for uid, _, _ in outbox.pending_study_keys()} == set(keys)

    failed = forwarder.post_study_keys()
    assert failed is not None and (failed.ok, failed.status, failed.retry_after) == (
        False,
        503,
        4.0,
    )
    assert outbox.study_keys_waiting() == 2  # kept: tried again

    posted = forwarder.post_study_keys()
    assert posted is not None and posted.ok and posted.acknowledged == 2
    assert posts[0] == posts[1]  # the same post again: the centre's answer is idempotent
    sent = {s["study_uid"]: (s["accession_key"], s["patient_key"]) for s in posts[1]["studies"]}
    assert sent == keys
    assert outbox.study_keys_waiting() == 0 and forwarder.post_study_keys() is None
    state = outbox.get_state("study_keys")
    assert state is not None and state["studies"] == 2 and state["answer"]["updated"] == 2

    # Keys survive a restart: a fresh outbox over the same file has nothing left to post.
    outbox.close()
    with Outbox(outbox_path(settings.resolved_home)) as reopened:
        assert reopened.study_keys_waiting() == 0
    client.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_running_forwarder_posts_keys_after_batches_despite_a_failing_route(
    settings: Settings,
) -> None:
    init_example_campaign(settings)
    ingest(settings, ct_instances(6, tag="run", studies=3))
    outbox = Outbox(outbox_path(settings.resolved_home))
    engine = create_engine_for(settings.resolved_database_url)
    stop = threading.Event()
    calls: list[str] = []

    def centre(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == STUDY_KEYS_PATH:
            request.read()
            if calls.count(STUDY_KEYS_PATH) == 1:  # an older centre, or a hiccup
                return httpx.Response(404, json={"detail": "Not Found"})
            if outbox.study_keys_waiting() <= 3 and outbox.stats().depth == 0:
                stop.set()
            return httpx.Response(200, json={"site": "site-a"})
        return httpx.Response(200, json=stow_answer(_uids_in(request)))

    client = httpx.Client(base_url="http://centre.test", transport=httpx.MockTransport(centre))
    forwarder = Forwarder(
        outbox,
        ObjectStore(settings.resolved_store_dir),
        client,
        "site-a",
        fill=lambda: outbox.fill(engine),
        batch_instances=2,
        backoff_max=0.2,
        idle_seconds=0.05,
    )
    thread = threading.Thread(target=forwarder.run, args=(stop,))
    thread.start()
    thread.join(timeout=30)
    stop.set()
    engine.dispose()
    assert not thread.is_alive()
    # Instances kept flowing while the keys route failed; the keys went once it answered.
    assert outbox.stats().depth == 0 and outbox.study_keys_waiting() == 0
    assert calls.count("/dicomweb/studies") == 3 and calls.count(STUDY_KEYS_PATH) >= 2
    outbox.close()
    client.close()


# -- through a real centre: the site's label sheet links --------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """Three small studies of site-a (two radiographs, a CT), with site-a's label sheet."""
    out: Path = tmp_path_factory.mktemp("synth")
    return generate(out, studies=3, seed=11, sites=("site-a",), image_size=32, ct_slices=2)


def _label_rows(settings: Settings) -> dict[str, int]:
    engine = create_engine_for(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            statuses = list(session.scalars(select(LabelRow.status)))
            labels = len(list(session.scalars(select(StudyLabel.id))))
    finally:
        engine.dispose()
    counts = {s: statuses.count(s) for s in set(statuses)}
    return counts | {"labels": labels}


def test_an_edge_forwarded_study_links_to_its_site_label_sheet(
    settings: Settings, synth: SynthResult, tmp_path: Path
) -> None:
    init_example_campaign(settings)  # the centre, on SQLite or PostgreSQL
    centre = ServeProcess({"MEDAI_SERVE_MODEL": ""})
    try:
        engine = create_engine_for(settings.resolved_database_url)
        kit = tmp_path / "site-a.kit"
        write_kit(settings, engine, "site-a", kit, PASSPHRASE, centre_url=centre.url,
                  certificate=None, actor=actors.operator())  # fmt: skip
        engine.dispose()
        edge_home = tmp_path / "edge"
        edge = Settings(home=edge_home, database_url=f"sqlite:///{edge_home / 'catalog.db'}")
        init_edge(edge, open_kit(kit.read_bytes(), PASSPHRASE), actor=actors.operator())
        # The site's RIS export reaches the centre before the images: kept, unmatched.
        sheet = import_label_sheet(synth.label_sheets["site-a"], "site-a", settings=settings)
        assert sheet.rows == 2 and sheet.counts.unmatched == 2

        # The PACS sends the study to the edge, which de-identifies it and forwards it.
        assert ingest(edge, [p.read_bytes() for p in synth.files]) == ["stored"] * 4
        edge_keys = _catalog_keys(edge)
        assert all(a and p for a, p in edge_keys.values())
        config = load_edge_config(edge_home)
        with Outbox(outbox_path(edge_home)) as outbox, config.client() as client:
            edge_engine = create_engine_for(edge.resolved_database_url)
            outbox.fill(edge_engine)
            edge_engine.dispose()
            forwarder = Forwarder(outbox, ObjectStore(edge.resolved_store_dir), client, "site-a")
            while batch := outbox.next_batch(max_instances=32, max_bytes=10**9):
                assert forwarder.send_batch(batch).ok
        # At the centre: the studies, without the keys the sheet finds them by: no label.
        assert set(_catalog_keys(settings).values()) == {(None, None)}
        assert set(_catalog_keys(settings)) == set(edge_keys)
        assert _label_rows(settings) == {"unmatched": 2, "labels": 0}

        # `medai edge run`'s forwarder posts the keys of the studies the centre holds.
        gateway = Gateway(edge, config, GatewayOptions(port=None))
        gateway.start()
        try:
            deadline = time.monotonic() + 30
            while gateway.outbox.study_keys_waiting():
                assert time.monotonic() < deadline, centre.output
                time.sleep(0.1)
        finally:
            gateway.stop()
        assert _catalog_keys(settings) == edge_keys
        assert _label_rows(settings) == {"matched": 2, "labels": 6}
    finally:
        centre.stop()
