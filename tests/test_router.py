"""Routing stable series: one unreadable header must not hold up the others."""

from __future__ import annotations

import struct
from pathlib import Path

from dicomnode.config import load_config
from dicomnode.router import route_stable_series
from dicomnode.spool import Spool, parse_header
from tests.hostile.corpus import IMPLICIT_LE, locate, mr, part10, splice


def _config(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(
        f'[node]\nae_title = "DICOMNODE"\nport = 11112\nstorage_dir = "{tmp_path / "var"}"\n'
        '[[destinations]]\nname = "out"\ntype = "folder"\npath = "out"\n'
        '[[rules]]\nname = "big"\nmatch = { Rows = "256" }\nmodel = "bicubic-x2"\n'
        'destinations = ["out"]\n')
    return load_config(path, ["bicubic-x2"])


def test_a_header_that_fails_to_convert_does_not_block_routing(tmp_path: Path):
    """Implicit VR Rows of 3 bytes passes the structure walk (no VR on the wire) but raised
    inside the rule's match, every second, ahead of every other stable series."""
    config = _config(tmp_path)
    spool = Spool(config.node.storage_dir)
    bad = part10(mr("router_bad"), transfer_syntax=IMPLICIT_LE)
    rows = locate(bad, 0x00280010)
    bad = splice(bad, rows.start, rows.value_start + rows.length,
                 struct.pack("<HHL", 0x0028, 0x0010, 3) + b"\x00\x01\x00")
    good = part10(mr("router_good"), transfer_syntax=IMPLICIT_LE)
    for part, now in ((bad, 1.0), (good, 2.0)):
        spool.store_instance(part.data, parse_header(part.data), "MODALITY", now=now)
    assert route_stable_series(config, spool, now=100.0) == 2
    states = dict(spool.db.execute("SELECT series_uid, state FROM series").fetchall())
    assert states == {bad.series_uid: "unrouted", good.series_uid: "queued"}
