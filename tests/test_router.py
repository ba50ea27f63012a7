"""Routing stable series: one unreadable header must not hold up the others."""

from __future__ import annotations

import logging
import sqlite3
import struct
from pathlib import Path

import pytest

from dicomnode import router
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


def test_a_header_that_fails_to_convert_does_not_block_routing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
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
    unreadable = [r for r in caplog.records if r.getMessage() == "instance_unreadable"]
    assert len(unreadable) == 1 and unreadable[0].levelno == logging.WARNING
    fields = unreadable[0].fields  # type: ignore[attr-defined]
    assert fields["series_uid"] == bad.series_uid and fields["error"] and fields["reason"]


def test_a_series_whose_routing_fails_is_logged_and_the_rest_are_routed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    config = _config(tmp_path)
    spool = Spool(config.node.storage_dir)
    first, second = part10(mr("router_first")), part10(mr("router_second"))
    for part, now in ((first, 1.0), (second, 2.0)):
        spool.store_instance(part.data, parse_header(part.data), "MODALITY", now=now)
    route = router.route_series

    def failing(config, spool, series_uid, now):  # type: ignore[no-untyped-def]
        if series_uid == first.series_uid:
            raise sqlite3.OperationalError("database or disk is full")
        route(config, spool, series_uid, now)

    monkeypatch.setattr(router, "route_series", failing)
    assert route_stable_series(config, spool, now=100.0) == 1
    states = dict(spool.db.execute("SELECT series_uid, state FROM series").fetchall())
    assert states[second.series_uid] == "queued" and states[first.series_uid] != "queued"
    (failed,) = [r for r in caplog.records if r.getMessage() == "series_route_failed"]
    assert failed.levelno == logging.ERROR
    assert failed.fields == {"series_uid": first.series_uid,  # type: ignore[attr-defined]
                             "error": "OperationalError", "reason": "database or disk is full"}
    monkeypatch.setattr(router, "route_series", route)  # the next pass routes it
    assert route_stable_series(config, spool, now=101.0) == 1
