"""Stability and routing (SPEC section 3, rules): a quiet series becomes jobs, one per rule.

A series is stable ``series_idle_seconds`` after its last instance. Every rule whose ``match``
holds makes its own job; a series this node produced (its Contributing Equipment item) is
stored but never routed again, so a PACS that forwards everything back makes no loop.
"""

from __future__ import annotations

import logging
import time

import pydicom
from pydicom.dataset import Dataset

from dicomnode.config import Config
from dicomnode.derive import produced_by_dicomnode
from dicomnode.logs import event
from dicomnode.spool import Spool

log = logging.getLogger(__name__)

PRODUCED_HERE = "produced by dicomnode: stored, not processed again"
NO_RULE = "no rule matches"


def route_stable_series(config: Config, spool: Spool, now: float | None = None) -> int:
    """Route every series that has gone quiet; returns how many were routed.

    A series whose routing fails is logged with the error and left stable, to be tried again
    on the next pass; the series after it are routed all the same.
    """
    now = time.time() if now is None else now
    routed = 0
    for series_uid in spool.stable_series(config.node.series_idle_seconds, now):
        try:
            route_series(config, spool, series_uid, now)
        except Exception as exc:  # one series (a bug, a full disk) must not stop the others
            event(log, "series_route_failed", logging.ERROR, series_uid=series_uid,
                  error=type(exc).__name__, reason=str(exc)[:300])
            continue
        routed += 1
    return routed


def route_series(config: Config, spool: Spool, series_uid: str, now: float) -> None:
    header = _first_header(spool, series_uid)
    if header is None:
        spool.route(series_uid, [], "no readable instance in the spool", now)
        event(log, "series_unrouted", logging.WARNING, series_uid=series_uid,
              reason="no readable instance")
        return
    if produced_by_dicomnode(header):
        spool.route(series_uid, [], PRODUCED_HERE, now)
        event(log, "series_unrouted", series_uid=series_uid, reason=PRODUCED_HERE)
        return
    jobs = [(rule.name, rule.model, rule.destinations)
            for rule in config.rules if rule.matches(header)]
    count = spool.route(series_uid, jobs, "" if jobs else NO_RULE, now)
    if jobs:
        event(log, "series_routed", series_uid=series_uid, jobs=count,
              rules=",".join(j[0] for j in jobs))
    else:
        event(log, "series_unrouted", series_uid=series_uid, reason=NO_RULE)


def _first_header(spool: Spool, series_uid: str) -> Dataset | None:
    for path in spool.series_instance_paths(series_uid):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            for _ in header.iterall():  # convert every value now, not inside a rule's match:
                pass                    # one that raised there stopped routing for all series
            return header
        except Exception as exc:  # a damaged file (pydicom raises many kinds): try the next one
            # the exception's text may quote received values (names): its type only
            event(log, "instance_unreadable", logging.WARNING, series_uid=series_uid,
                  file=path.name, error=type(exc).__name__,
                  reason="its header cannot be read or converted; trying the next instance")
    return None
