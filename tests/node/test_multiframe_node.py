"""An Enhanced MR through the node with real peers: storescu in, Orthanc out (SPEC section 10).

The Siemens XA30 object goes to the node and, untouched, to Orthanc; the node's two MR rules
(the default ``mr-sr-x2`` and ``mr-denoise``) each send back one derived Enhanced MR, which
Orthanc files as a series of the same study, beside the original, and decodes frame by frame.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ENHANCED_MR_DIR
from tests.node.conftest import pacs_destination
from tests.peers import Orthanc, storescu, wait_for
from tests.test_multiframe import XA30, _check_derived

pytestmark = [pytest.mark.network, pytest.mark.slow]

RULES = {"mr-sr": ("mr-sr-x2", 2, " [dicomnode SRx2]"),
         "mr-dn": ("mr-denoise", 1, " [dicomnode DN]")}


def _rules() -> str:
    return "".join(
        f'[[rules]]\nname = "{name}"\nmatch = {{ Modality = "MR" }}\nmodel = "{model}"\n'
        f'destinations = ["pacs"]\nseries_description_suffix = "{suffix}"\n'
        for name, (model, _scale, suffix) in RULES.items())


def test_enhanced_mr_derived_in_its_iod_beside_the_original_in_orthanc(
        orthanc: Orthanc, node_factory, tmp_path: Path):
    node = node_factory(_rules(), pacs_destination(orthanc))
    node.start()
    storescu(ENHANCED_MR_DIR, node.port)
    storescu(ENHANCED_MR_DIR, orthanc.dicom_port, called=orthanc.aet)  # the original
    wait_for(lambda: orthanc.instance_count() >= 3, 900, "the original and two derived objects")
    wait_for(lambda: node.status().get("jobs") == {"done": 2}, 60, "both jobs done")

    (study,) = orthanc.get("/studies")
    series = orthanc.get(f"/studies/{study}/series")
    assert len(series) == 3  # one study: the original and one derived series per rule
    by_description = {s["MainDicomTags"].get("SeriesDescription", ""): s for s in series}
    for name, (model, scale, suffix) in RULES.items():
        (derived,) = [s for d, s in by_description.items() if d.endswith(suffix)]
        (instance,) = derived["Instances"]
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(orthanc.instance_file(instance))
        _check_derived(path, XA30, model, scale, rule=name)
        frames = orthanc.get(f"/instances/{instance}/frames")
        assert len(frames) == 96
        preview = orthanc.get(f"/instances/{instance}/frames/47/preview")
        assert preview[:8] == b"\x89PNG\r\n\x1a\n"  # Orthanc decodes the derived frames
    assert node.stop() == 0
