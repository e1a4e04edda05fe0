"""`medai edge run --pull-url`: the site archive's DICOMweb pulled on site, forwarded once.

A PACS that speaks DICOMweb only (Debian's Orthanc with its plugin) holds identified studies;
the edge pulls them on a timer, de-identifies them in the hospital and forwards them; the
centre ends with each instance once and reconcile at zero differences.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.edge.helpers import ct_files
from tests.edge.test_edge_e2e import (
    EdgeProcess,
    assert_all_arrived_once,
    clean_env,  # noqa: F401 (fixture)
    make_centre,
    make_edge,
    medai,
    tmp,  # noqa: F401 (fixture)
    wait_forwarded,
)
from tests.utils.orthanc import Orthanc, require_orthanc

pytestmark = pytest.mark.slow


def test_the_edge_pulls_the_site_archive_and_forwards_each_instance_once(tmp: Path) -> None:  # noqa: F811
    require_orthanc()
    home, centre = make_centre(tmp)
    sites = make_edge(tmp, home, centre.url)
    files = ct_files(tmp / "pacs", 6, tag="pull")
    with Orthanc() as archive:
        archive.upload_files(files)
        edge = EdgeProcess(
            sites.edge,
            "--pull-url", archive.dicomweb_url, "--pull-since", "1900-01-01",
            "--pull-every", "5",
        )  # fmt: skip
        try:
            wait_forwarded(sites.edge, len(files), edge, timeout=120)
            # The next pulls find nothing new: the checkpoint and the catalog say so.
            output = edge.stop()
            assert "pull from the site archive failed" not in output, output
            assert_all_arrived_once(sites, len(files))
            status = medai(sites.edge, "collect", "verify")
            assert status.returncode == 0, status.stdout + status.stderr
        finally:
            edge.stop()
            centre.stop()
