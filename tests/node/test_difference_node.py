"""A rule with outputs = ["enhanced", "difference"], end to end: storescu in, Orthanc out."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests.conftest import CT_TILT_DIR, dciodvfy_errors
from tests.node.conftest import pacs_destination
from tests.peers import Orthanc, storescu, wait_for

pytestmark = [pytest.mark.network]
CT_COUNT = 6
RULE = ('[[rules]]\nname = "ct-dn"\nmatch = { Modality = "CT" }\nmodel = "nlm-denoise"\n'
        'destinations = ["pacs"]\nseries_description_suffix = " [dicomnode NLM]"\n'
        'outputs = ["enhanced", "difference"]\n')


def _preview(orthanc: Orthanc, instance: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance}/preview"
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_difference_series_arrives_beside_original_and_enhanced(orthanc: Orthanc, node_factory,
                                                                tmp_path: Path) -> None:
    storescu(CT_TILT_DIR, orthanc.dicom_port, called=orthanc.aet)  # the original, as a PACS has
    node = node_factory(RULE, pacs_destination(orthanc))
    node.start()
    storescu(CT_TILT_DIR, node.port)
    wait_for(lambda: orthanc.instance_count() >= 3 * CT_COUNT, 120,
             "the enhanced and difference series in Orthanc")
    wait_for(lambda: node.status().get("series", {}).get("done") == 1, 30, "series done")

    (study,) = orthanc.get("/studies")
    series = orthanc.get(f"/studies/{study}/series")
    assert len(series) == 3 and orthanc.instance_count() == 3 * CT_COUNT
    by_kind: dict[str, dict] = {}
    for item in series:
        assert len(item["Instances"]) == CT_COUNT
        tags = orthanc.get(f"/instances/{item['Instances'][0]}/tags?simplify")
        kind = ("difference" if tags["ImageType"].endswith("DIFFERENCE")
                else "enhanced" if tags["ImageType"].startswith("DERIVED") else "original")
        by_kind[kind] = {**item, "tags": tags}
    assert set(by_kind) == {"original", "enhanced", "difference"}
    original, enhanced, diff = (by_kind[k]["tags"] for k in ("original", "enhanced",
                                                             "difference"))
    assert diff["ImageType"] == "DERIVED\\SECONDARY\\DIFFERENCE"
    assert int(diff["SeriesNumber"]) == int(original["SeriesNumber"]) + 2000
    assert int(enhanced["SeriesNumber"]) == int(original["SeriesNumber"]) + 1000
    assert diff["SeriesDescription"].endswith("[dicomnode NLM] DIFF")
    assert diff["FrameOfReferenceUID"] == original["FrameOfReferenceUID"]
    assert diff["PixelRepresentation"] == "1" and float(diff["WindowCenter"]) == 0

    for instance in by_kind["difference"]["Instances"][:2]:  # Orthanc decodes and renders it
        status, content_type, body = _preview(orthanc, instance)
        assert status == 200 and content_type == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"

    sample = tmp_path / "difference.dcm"
    sample.write_bytes(orthanc.instance_file(by_kind["difference"]["Instances"][0]))
    source_uid = pydicom.dcmread(sample).SourceImageSequence[0].ReferencedSOPInstanceUID
    source = next(p for p in CT_TILT_DIR.glob("*.dcm")
                  if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == source_uid)
    assert not (dciodvfy_errors(sample) - dciodvfy_errors(source))
    assert node.status()["destinations"]["pacs"]["sent"] == 2 * CT_COUNT
    assert node.stop() == 0
    assert "differences=6" in node.log_text()
