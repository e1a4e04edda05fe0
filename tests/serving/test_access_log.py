"""The access log never shows a UID from a request path."""

from __future__ import annotations

import importlib
import logging

from medai.serving.access_log import RedactUids, uvicorn_log_config


def _redacted(path: str) -> str:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", path, "1.1", 200),
        None,
    )
    assert RedactUids().filter(record)
    return record.getMessage()


def test_uid_segments_are_redacted() -> None:
    uid = "1.2.826.0.1.3680043.8.498.11942224228258904810727080771427310216"
    assert _redacted(f"/dicomweb/studies/{uid}?site=site-a") == (
        '127.0.0.1:5 - "POST /dicomweb/studies/{uid}?site=site-a HTTP/1.1" 200'
    )
    assert "{uid}/series/{uid}" in _redacted(f"/dicomweb/studies/{uid}/series/2.25.7")
    assert "/v1/models/v1.2/predict" in _redacted("/v1/models/v1.2/predict")  # not a UID
    assert "/healthz" in _redacted("/healthz")


def test_the_callers_study_reference_is_redacted() -> None:
    line = _redacted("/v1/predict?reference=ACC-2291&x=1")
    assert "/v1/predict?reference={reference}&x=1 " in line and "ACC-2291" not in line
    assert "?preference=kept" in _redacted("/v1/predict?preference=kept")


def test_the_filter_is_on_uvicorns_access_handler() -> None:
    # The end-to-end STOW-RS test shows the real server's log; here, the wiring.
    config = uvicorn_log_config()
    assert "redact_uids" in config["handlers"]["access"]["filters"]
    module, _, name = config["filters"]["redact_uids"]["()"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is RedactUids
