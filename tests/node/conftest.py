"""Fixtures for the node tests: a real Orthanc and real node processes, stopped after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import NodeProcess, Orthanc

MR_COUNT = 35


def pacs_destination(orthanc: Orthanc, name: str = "pacs") -> str:
    return (f'[[destinations]]\nname = "{name}"\ntype = "dicom"\nae_title = "{orthanc.aet}"\n'
            f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')


def sr_rule(name: str = "mr-sr", destinations: str = '["pacs"]',
            suffix: str = " [dicomnode SRx2]") -> str:
    return (f'[[rules]]\nname = "{name}"\nmatch = {{ Modality = "MR" }}\nmodel = "bicubic-x2"\n'
            f'destinations = {destinations}\nseries_description_suffix = "{suffix}"\n')


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    nodes: list[NodeProcess] = []

    def make(rules: str, destinations: str, **kwargs) -> NodeProcess:
        workdir = tmp_path / f"node{len(nodes)}"
        workdir.mkdir()
        node = NodeProcess(workdir, rules, destinations, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.process is not None and node.process.poll() is None:
            node.kill9()


