"""The shipped ``config.toml`` as a node runs it: its learned mr-sr-x2 rule, plus a learned CT
denoiser, through ``dicomnode serve`` from storescu to Orthanc (the other node tests use the
classical models, which need no weights).

The config is the repository's own, with only what a test must change: loopback and free
ports, a temporary storage folder, a short idle time, and Orthanc added as a destination.
"""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from dicomnode.engine.cards import load_card
from dicomnode.engine.degradations import kspace_truncate
from dicomnode.engine.guards import low_pass
from tests.conftest import CT_TILT_DIR, MR_DIR, dciodvfy_errors
from tests.node.conftest import pacs_destination
from tests.peers import REPO, NodeProcess, Orthanc, storescu, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

MR_SLICES = 6


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _document(raw: dict[str, Any]) -> str:
    lines = []
    for name, table in raw.items():
        items = table if isinstance(table, list) else [table]
        for item in items:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in item.items()
                      if not isinstance(v, dict) or k == "match"]
    return "\n".join(lines) + "\n"


def _shipped_config(node: NodeProcess, orthanc: Orthanc) -> list[dict[str, Any]]:
    """config.toml with the test's ports and folders, Orthanc added to every rule, and a
    ct-denoise rule; returns the shipped rules."""
    raw = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    shipped = [dict(rule) for rule in raw["rules"]]
    raw["node"].update(host="127.0.0.1", port=node.port, storage_dir=str(node.workdir / "var"),
                       series_idle_seconds=1.0, min_free_disk_mb=1)
    raw["http"].update(port=node.http_port)
    for destination in raw["destinations"]:
        if destination.get("type") == "folder":
            destination["path"] = str(node.workdir / "outbox")
    raw["destinations"].append(tomllib.loads(pacs_destination(orthanc))["destinations"][0])
    for rule in raw["rules"]:
        rule["destinations"] = [*rule["destinations"], "pacs"]
    raw["rules"].append({"name": "ct-denoise", "match": {"Modality": "CT"},
                         "model": "ct-denoise", "destinations": ["pacs"],
                         "series_description_suffix": " [dicomnode denoised]"})
    node.config.write_text(_document(raw), encoding="utf-8")
    return shipped


def test_the_shipped_config_with_a_learned_denoiser_delivers_to_orthanc(
        orthanc: Orthanc, node_factory, tmp_path: Path) -> None:
    node: NodeProcess = node_factory("", "")
    (shipped,) = _shipped_config(node, orthanc)
    assert shipped["model"] == "mr-sr-x2" and shipped["match"] == {"Modality": "MR"}
    assert node.cli("check-config").returncode == 0
    node.start()
    mr = tmp_path / "mr"
    mr.mkdir()
    sources = {}
    for path in sorted(MR_DIR.glob("*.dcm"))[14:14 + MR_SLICES]:
        (mr / path.name).write_bytes(path.read_bytes())
    for path in [*mr.iterdir(), *CT_TILT_DIR.glob("*.dcm")]:
        sources[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    storescu(mr, node.port)
    storescu(CT_TILT_DIR, node.port)
    total = len(sources)
    wait_for(lambda: orthanc.instance_count() >= total, 300, f"{total} derived instances")
    wait_for(lambda: node.status().get("jobs") == {"done": 2}, 60, "both jobs done")
    assert orthanc.instance_count() == total

    cards = {name: load_card(name) for name in ("mr-sr-x2", "ct-denoise")}
    seen: dict[str, int] = {}
    for series in orthanc.get("/series?expand"):
        for index, instance in enumerate(series["Instances"]):
            data = orthanc.instance_file(instance)
            ds = pydicom.dcmread(io.BytesIO(data))
            source_path = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
            source = pydicom.dcmread(source_path)
            name = "mr-sr-x2" if source.Modality == "MR" else "ct-denoise"
            seen[name] = seen.get(name, 0) + 1
            card = cards[name]
            guard = "consistency" if name == "mr-sr-x2" else "intensity"
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert ds.DerivationDescription.startswith(
                f"{'Super-resolution x2' if name == 'mr-sr-x2' else 'Denoising'} (dicomnode "
                f"{name} {card.version}); AI-processed; guards: {guard}")
            _assert_guarded(name, ds, source)
            if index == 0:
                sample = tmp_path / f"{name}.dcm"
                sample.write_bytes(data)
                assert not dciodvfy_errors(sample) - dciodvfy_errors(source_path)
    assert seen == {"mr-sr-x2": MR_SLICES, "ct-denoise": total - MR_SLICES}
    assert len(list((node.workdir / "outbox").rglob("*.dcm"))) == MR_SLICES
    metrics = node.http("/metrics")[1]
    assert f'dicomnode_instances_sent_total{{destination="pacs"}} {total}.0' in metrics
    assert node.stop() == 0
    assert "model_loaded" in node.log_text()


def _assert_guarded(name: str, ds: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """What the model's guard promises, on the object Orthanc holds."""
    derived = ds.pixel_array.astype(np.float64)
    original = source.pixel_array.astype(np.float64)
    if name == "mr-sr-x2":
        assert derived.shape == (2 * source.Rows, 2 * source.Columns)
        # consistency: the derived image's central k-space is the source (up to rounding)
        assert np.median(np.abs(kspace_truncate(derived, 2) - original)) <= 1.0
        return
    padding = original == source.PixelPaddingValue
    assert padding.any() and np.all(derived[padding] == original[padding])
    tissue = ~padding
    assert np.std((derived - original)[tissue]) > 1.0  # it did denoise
    # intensity: the low-pass is kept within 0.5 % of the range (off the padding's edge, where
    # the node showed the network a mirrored fill instead)
    span = float(np.ptp(original[tissue]))
    inner = low_pass(tissue.astype(float)) > 0.999
    assert np.abs(low_pass(derived) - low_pass(original))[inner].max() <= 0.005 * span
