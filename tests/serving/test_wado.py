"""WADO-RS in process: instances, metadata with BulkDataURIs, frames, rendered, errors, audit."""

from __future__ import annotations

import io
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP

import numpy as np
import pydicom
import pytest
from PIL import Image

from medai.config import Settings
from medai.dicom.synth import SynthResult
from tests.serving.helpers import TestClient, bearer, new_key
from tests.serving.test_qido import browsing
from tests.utils.audit import audit_records

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


@pytest.fixture
def browse(campaign: Settings, synth: SynthResult) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with browsing(campaign, synth, "steward-wado") as found:
        yield found


def parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The (content type, bytes) of each part of a multipart/related body."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart()
    found = []
    for part in message.iter_parts():
        params = part.get_params() or []
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append(
            (part.get_content_type() + "".join(f"; {k}={v}" for k, v in params[1:]), payload)
        )
    return found


def ct_ids(client: TestClient, headers: dict[str, str]) -> tuple[str, str, list[str]]:
    study = client.get(
        "/dicomweb/studies", params={"ModalitiesInStudy": "CT"}, headers=headers
    ).json()[0][STUDY_UID]["Value"][0]
    instances = client.get(f"/dicomweb/studies/{study}/instances", headers=headers).json()
    series = instances[0][SERIES_UID]["Value"][0]
    return study, series, [i[SOP_UID]["Value"][0] for i in instances]


def test_study_retrieve_streams_every_instance_deidentified(
    browse: tuple[TestClient, dict[str, str]], campaign: Settings, synth: SynthResult
) -> None:
    client, headers = browse
    study, series, sops = ct_ids(client, headers)
    response = client.get(
        f"/dicomweb/studies/{study}",
        headers=headers | {"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    received = parts(response.headers["content-type"], response.content)
    assert len(received) == 2
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, data in received]
    assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(sops)
    for value in synth.phi_values | synth.uid_values:
        assert value.encode() not in response.content
    one = client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sops[0]}", headers=headers
    )
    assert len(parts(one.headers["content-type"], one.content)) == 1
    # One audit record for the whole study, not one per instance.
    records = audit_records(campaign, "dicomweb.retrieve")
    assert [r.details for r in records] == [
        {"level": "study", "what": "instances", "instances": 2},
        {"level": "instance", "what": "instances", "instances": 1},
    ]
    assert records[0].subject == study and records[0].actor == "apikey:steward-wado"


def test_metadata_has_no_pixels_and_a_bulk_data_uri(
    browse: tuple[TestClient, dict[str, str]], synth: SynthResult
) -> None:
    client, headers = browse
    study, series, sops = ct_ids(client, headers)
    response = client.get(f"/dicomweb/studies/{study}/metadata", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    items = response.json()
    assert len(items) == 2
    for item in items:
        assert "InlineBinary" not in item.get("7FE00010", {})
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri.endswith("/bulkdata/7FE00010")
        ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
        assert str(ds.StudyInstanceUID) == study
    for value in synth.phi_values | synth.uid_values:
        assert value not in response.text
    bulk = client.get(uri.split("testserver", 1)[1], headers=headers)
    assert bulk.status_code == 200, bulk.text
    ((kind, data),) = parts(bulk.headers["content-type"], bulk.content)
    assert kind.startswith("application/octet-stream") and len(data) > 0
    series_meta = client.get(f"/dicomweb/studies/{study}/series/{series}/metadata", headers=headers)
    assert len(series_meta.json()) == 2
    one = client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sops[0]}/metadata", headers=headers
    )
    assert one.json()[0][SOP_UID]["Value"] == [sops[0]]


def test_frames_and_rendered(browse: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = browse
    study, series, sops = ct_ids(client, headers)
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sops[0]}"
    whole = client.get(base, headers=headers)
    ((_, data),) = parts(whole.headers["content-type"], whole.content)
    ds = pydicom.dcmread(io.BytesIO(data))
    expected = ds.pixel_array

    frames = client.get(base + "/frames/1", headers=headers)
    assert frames.status_code == 200, frames.text
    ((kind, pixels),) = parts(frames.headers["content-type"], frames.content)
    assert kind.startswith("application/octet-stream")
    decoded = np.frombuffer(pixels, dtype=expected.dtype.newbyteorder("<")).reshape(expected.shape)
    assert np.array_equal(decoded, expected)

    for accept, form in (("image/png", "PNG"), ("image/jpeg", "JPEG"), (None, "JPEG")):
        extra = {"Accept": accept} if accept else {}
        image = client.get(base + "/rendered", headers=headers | extra)
        assert image.status_code == 200, image.text
        picture = Image.open(io.BytesIO(image.content))
        assert picture.format == form
        assert picture.size == (int(ds.Columns), int(ds.Rows))
    png = client.get(base + "/frames/1/rendered", headers=headers | {"Accept": "image/png"})
    assert np.asarray(Image.open(io.BytesIO(png.content))).std() > 0  # not a blank image


def test_retrieve_errors_say_what_to_do(browse: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = browse
    study, series, sops = ct_ids(client, headers)
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sops[0]}"
    assert client.get("/dicomweb/studies/1.2.3.4", headers=headers).status_code == 404
    assert client.get("/dicomweb/studies/1.2.x", headers=headers).status_code == 400
    assert client.get(base + "/frames/2", headers=headers).status_code == 404
    assert client.get(base + "/frames/one", headers=headers).status_code == 400
    assert client.get(base + "/frames/0", headers=headers).status_code == 404
    assert client.get(base + "/frames/\u00b2", headers=headers).status_code == 400
    assert client.get(base + "/frames/\u00b2/rendered", headers=headers).status_code == 400
    many = client.get(base + "/frames/" + ",".join(["1"] * 1001), headers=headers)
    assert many.status_code == 400 and "at most 1000" in many.json()["detail"]
    assert client.get(base + "/bulkdata/7FE0001G", headers=headers).status_code == 400
    gif = client.get(base + "/rendered", headers=headers | {"Accept": "image/gif"})
    assert gif.status_code == 406 and "image/jpeg or image/png" in gif.json()["detail"]
    text = client.get(f"/dicomweb/studies/{study}", headers=headers | {"Accept": "text/plain"})
    assert text.status_code == 406
    odd_syntax = client.get(
        f"/dicomweb/studies/{study}",
        headers=headers
        | {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3'},
    )
    assert odd_syntax.status_code == 406
    assert client.get(base + "/bulkdata/00100010", headers=headers).status_code == 404
    clinician = bearer(new_key_for(client))
    assert client.get(f"/dicomweb/studies/{study}", headers=clinician).status_code == 403


def new_key_for(client: TestClient) -> str:
    settings: Settings = client.app.state.service.settings  # type: ignore[attr-defined]
    return new_key(settings, "clinician", "clinician-wado")


def test_every_stored_transfer_syntax_gives_frames_and_renders(
    browse: tuple[TestClient, dict[str, str]], synth: SynthResult
) -> None:
    client, headers = browse
    instances = client.get("/dicomweb/instances", headers=headers).json()
    assert len(instances) == synth.instances
    syntaxes = set()
    for item in instances:
        study, series, sop = (item[tag]["Value"][0] for tag in (STUDY_UID, SERIES_UID, SOP_UID))
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        whole = client.get(base, headers=headers)
        ((_, data),) = parts(whole.headers["content-type"], whole.content)
        ds = pydicom.dcmread(io.BytesIO(data))
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        expected = ds.pixel_array
        # Without transfer-syntax=*: Explicit VR Little Endian pixels, whatever is stored.
        decoded = client.get(base + "/frames/1", headers=headers)
        ((kind, pixels),) = parts(decoded.headers["content-type"], decoded.content)
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            assert "1.2.840.10008.1.2.1" in kind
        array = np.frombuffer(pixels, dtype=expected.dtype.newbyteorder("<"))
        assert np.array_equal(array.reshape(expected.shape), expected)
        # With it: the frame as stored (encoded for a compressed syntax).
        native = client.get(
            base + "/frames/1",
            headers=headers
            | {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        )
        ((kind, stored),) = parts(native.headers["content-type"], native.content)
        assert str(ds.file_meta.TransferSyntaxUID) in kind and len(stored) > 0
        png = client.get(base + "/rendered", headers=headers | {"Accept": "image/png"})
        assert Image.open(io.BytesIO(png.content)).size == (int(ds.Columns), int(ds.Rows))
    assert "1.2.840.10008.1.2.5" in syntaxes  # RLE Lossless: a compressed one is covered
