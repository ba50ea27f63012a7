"""The status page: what an administrator and a radiologist look at instead of the logs.

Server-rendered HTML from the spool's SQLite index (opened read-only per request, so the page
never holds a lock the node needs): health, each destination's queue and last error, recent
series with their jobs (rule, model, state, timings, instance counts), before / after /
difference thumbnails of finished series (``thumbnails.py``) and a rule tester that shows,
condition by condition, why each rule matches a received series or not.

Patient names and IDs appear only with ``[http] show_phi = true``; a rule condition on a
patient attribute then shows its value, otherwise only whether it held.
"""

from __future__ import annotations

import html
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pydicom

from dicomnode.config import Config, Rule
from dicomnode.errors import InputRejected
from dicomnode.thumbnails import KINDS, middle_pair, render

RECENT = 50
THUMBNAIL_CACHE = 32
_PHI_PREFIXES = ("Patient", "OtherPatient", "Responsible")
_PHI_KEYWORDS = {"AccessionNumber", "ReferringPhysicianName", "PerformingPhysicianName",
                 "OperatorsName", "InstitutionName", "InstitutionAddress", "StudyID",
                 "RequestingPhysician", "NameOfPhysiciansReadingStudy"}
FINISHED = ("sending", "done")


def is_phi(keyword: str) -> bool:
    return keyword.startswith(_PHI_PREFIXES) or keyword in _PHI_KEYWORDS


@dataclass(frozen=True)
class Condition:
    keyword: str
    expected: str
    actual: str  # "" when hidden or absent
    holds: bool
    hidden: bool


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    matches: bool
    conditions: tuple[Condition, ...]


class StatusData:
    """Read-only queries of the index, plus a small thumbnail cache."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.index = Path(config.node.storage_dir) / "index.sqlite"
        self._thumbs: OrderedDict[tuple[int, float], dict[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        if not self.index.exists():
            return []
        db = sqlite3.connect(f"file:{self.index}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def destinations(self) -> list[dict]:
        counts: dict[str, dict] = {d.name: {} for d in self.config.destinations}
        for row in self._query("SELECT destination, state, COUNT(*) AS n FROM deliveries "
                               "GROUP BY 1, 2"):
            counts.setdefault(row["destination"], {})[row["state"]] = row["n"]
        errors = {r["destination"]: (r["last_error"], r["t"]) for r in self._query(
            "SELECT destination, last_error, MAX(updated_at) AS t FROM deliveries "
            "WHERE last_error != '' GROUP BY destination")}
        result = []
        for destination in self.config.destinations:
            target = {"dicom": f"{destination.ae_title}@{destination.host}:{destination.port}",
                      "folder": str(destination.path),
                      "dicomweb": destination.url}.get(destination.type, "")
            error, when = errors.get(destination.name, ("", None))
            result.append({"name": destination.name, "type": destination.type,
                           "target": target, **counts.get(destination.name, {}),
                           "last_error": error, "last_error_at": when})
        return result

    def recent_series(self, limit: int = RECENT) -> list[dict]:
        rows = self._query(
            "SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) "
            "AS instances FROM series s ORDER BY s.last_received_at DESC LIMIT ?", (limit,))
        return [self._with_jobs(dict(r)) for r in rows]

    def series(self, series_uid: str) -> dict | None:
        rows = self._query(
            "SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) "
            "AS instances FROM series s WHERE s.series_uid = ?", (series_uid,))
        return self._with_jobs(dict(rows[0])) if rows else None

    def _with_jobs(self, item: dict) -> dict:
        item["jobs"] = [dict(j) for j in self._query(
            "SELECT j.*, (SELECT COUNT(DISTINCT d.sop_uid) FROM deliveries d "
            "WHERE d.job_id = j.id) AS derived FROM jobs j WHERE j.series_uid = ? "
            "ORDER BY j.id", (item["series_uid"],))]
        item.update(self._header_fields(item["series_uid"]))
        return item

    def _header_fields(self, series_uid: str) -> dict:
        header = self.first_header(series_uid)
        if header is None:
            return {"description": "", "series_number": ""}
        fields = {"description": str(header.get("SeriesDescription", "") or ""),
                  "series_number": str(header.get("SeriesNumber", "") or "")}
        if self.config.http.show_phi:
            fields["patient_name"] = str(header.get("PatientName", "") or "")
            fields["patient_id"] = str(header.get("PatientID", "") or "")
        return fields

    def first_header(self, series_uid: str) -> pydicom.Dataset | None:
        for row in self._query("SELECT path FROM instances WHERE series_uid = ? ORDER BY path "
                               "LIMIT 5", (series_uid,)):
            try:
                return pydicom.dcmread(row["path"], stop_before_pixels=True)
            except Exception:  # a damaged or purged file: try the next
                continue
        return None

    def job(self, job_id: int) -> dict | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return dict(rows[0]) if rows else None

    def latest_finished_job(self) -> dict | None:
        rows = self._query("SELECT * FROM jobs WHERE state IN ('sending', 'done') "
                           "ORDER BY finished_at DESC LIMIT 1")
        return dict(rows[0]) if rows else None

    def thumbnails(self, job_id: int) -> dict[str, bytes]:
        """PNGs of the job's middle slice; InputRejected when they cannot be made."""
        job = self.job(job_id)
        if job is None or job["state"] not in FINISHED:
            raise InputRejected(f"job {job_id} has no finished derived series")
        key = (job_id, float(job["finished_at"] or 0))
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        derived = sorted({Path(r["path"]) for r in self._query(
            "SELECT path FROM deliveries WHERE job_id = ?", (job_id,))})
        sources = {r["sop_uid"]: Path(r["path"]) for r in self._query(
            "SELECT sop_uid, path FROM instances WHERE series_uid = ?", (job["series_uid"],))}
        images = render(middle_pair([p for p in derived if p.exists()], sources))
        with self._lock:
            self._thumbs[key] = images
            while len(self._thumbs) > THUMBNAIL_CACHE:
                self._thumbs.popitem(last=False)
        return images

    def rule_test(self, series_uid: str) -> tuple[list[RuleResult], str]:
        """Each rule against the series' first header; the second value explains a skip."""
        from dicomnode.derive import produced_by_dicomnode

        header = self.first_header(series_uid)
        if header is None:
            return [], "no readable instance of this series is in the spool"
        note = ""
        if produced_by_dicomnode(header):
            note = ("this series was produced by dicomnode: the node stores it but never "
                    "routes it, whatever the rules below say")
        results = []
        for rule in self.config.rules:
            conditions = []
            for condition in rule.match:
                value = header.get(condition.keyword)
                holds = condition.holds(value)
                hidden = is_phi(condition.keyword) and not self.config.http.show_phi
                actual = "" if hidden or value is None else _shown(value)
                conditions.append(Condition(condition.keyword, condition.expected, actual,
                                            holds, hidden))
            results.append(RuleResult(rule, all(c.holds for c in conditions),
                                      tuple(conditions)))
        return results, note


def _shown(value: object) -> str:
    if isinstance(value, str | bytes | int | float):
        return str(value)
    try:
        return "\\".join(str(v) for v in value)  # type: ignore[attr-defined]
    except TypeError:
        return str(value)


# -- HTML --------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f4f6f8}
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header h1{font-size:18px;margin:0}
main{padding:16px 20px;max-width:1400px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 16px;
margin-bottom:16px}
h2{font-size:15px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef1f4;vertical-align:top}
th{font-weight:600;color:#4a5563;font-size:12px;text-transform:uppercase}
.ok{color:#11772f;font-weight:600}.bad{color:#b42318;font-weight:600}
.state{display:inline-block;padding:0 6px;border-radius:8px;background:#e8edf3;font-size:12px}
.state-done{background:#d3f2dc}.state-failed{background:#fbd9d6}
.state-processing,.state-sending,.state-queued{background:#fff0c2}
.uid{font-family:ui-monospace,monospace;font-size:12px;color:#4a5563}
.thumbs{display:flex;gap:12px;flex-wrap:wrap}.thumbs figure{margin:0}
.thumbs img{background:#000;display:block;max-width:320px;border-radius:4px}
figcaption{font-size:12px;color:#4a5563;text-align:center}
.error{color:#b42318;font-size:12px}.muted{color:#6b7685;font-size:12px}
"""

_SCRIPT = """
document.querySelectorAll('img.thumb').forEach(function (img) {
  function mark() { img.dataset.loaded = img.naturalWidth > 0 ? 'yes' : 'no'; }
  if (img.complete) { mark(); } else {
    img.addEventListener('load', mark); img.addEventListener('error', mark); }
});
var box = document.getElementById('autorefresh');
if (box) {
  box.checked = localStorage.getItem('dicomnode-autorefresh') === '1';
  box.addEventListener('change', function () {
    localStorage.setItem('dicomnode-autorefresh', box.checked ? '1' : '0');
    if (box.checked) { location.reload(); } });
  setTimeout(function () { if (box.checked) { location.reload(); } }, 5000);
}
"""


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, ae_title: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{e(title)} - dicomnode {e(ae_title)}</title><style>{_STYLE}</style></head>"
        f"<body><header><h1>dicomnode {e(ae_title)}</h1><a href='/'>Status</a>"
        "<a href='/rules'>Rule tester</a><a href='/metrics'>Metrics</a></header>"
        f"<main>{body}</main><script>{_SCRIPT}</script></body></html>"
    ).encode()


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def _seconds(start: float | None, end: float | None) -> str:
    return f"{end - start:.1f} s" if start and end and end >= start else ""


def _state(state: str) -> str:
    return f"<span class='state state-{e(state)}'>{e(state)}</span>"


def status_body(data: StatusData, health: dict) -> str:
    checks = "".join(
        f"<td class={'ok' if ok else 'bad'}>{e(name)}: {'up' if ok else 'DOWN'}</td>"
        for name, ok in health.get("checks", {}).items())
    overall = "<span class=ok>healthy</span>" if health.get("ok") else \
        "<span class=bad>NOT healthy</span>"
    parts = [f"<section><h2>Node {overall} <label class=muted style='float:right'>"
             "<input type=checkbox id=autorefresh> refresh every 5 s</label></h2>"
             f"<table><tr>{checks}</tr></table></section>"]
    rows = "".join(_destination_row(d) for d in data.destinations())
    parts.append("<section><h2>Destinations</h2><table><tr><th>name</th><th>type</th>"
                 "<th>target</th><th>pending</th><th>sent</th><th>failed</th>"
                 f"<th>last error</th></tr>{rows or '<tr><td colspan=7>none</td></tr>'}"
                 "</table></section>")
    latest = data.latest_finished_job()
    if latest is not None:
        parts.append(f"<section><h2>Latest finished series: rule {e(latest['rule'])}, model "
                     f"{e(latest['model'])}</h2><div class=uid>{e(latest['series_uid'])}</div>"
                     f"{thumbnails_html(latest['id'])}</section>")
    parts.append(series_table(data, data.recent_series()))
    return "".join(parts)


def _destination_row(d: dict) -> str:
    when = f" <span class=muted>{e(_when(d['last_error_at']))}</span>" if d["last_error"] else ""
    return (f"<tr><td>{e(d['name'])}</td><td>{e(d['type'])}</td>"
            f"<td class=uid>{e(d['target'])}</td><td>{d.get('pending', 0)}</td>"
            f"<td>{d.get('sent', 0)}</td><td>{d.get('failed', 0)}</td>"
            f"<td class=error>{e(d['last_error'])}{when}</td></tr>")


def _job_line(j: dict) -> str:
    parts = [f"{_state(j['state'])} {e(j['rule'])} / {e(j['model'])}: {j['derived'] or 0} derived"]
    if j["finished_at"]:
        parts.append(f"processing {_seconds(j['started_at'], j['finished_at'])}")
    if j["state"] == "done":
        parts.append(f"sending {_seconds(j['finished_at'], j['updated_at'])}")
    error = f"<div class=error>{e(j['error'])}</div>" if j["error"] else ""
    return f"<div>{', '.join(parts)}{error}</div>"


def series_table(data: StatusData, series: Iterable[dict]) -> str:
    phi = data.config.http.show_phi
    rows = []
    for s in series:
        jobs = "".join(_job_line(j) for j in s["jobs"]) or \
            f"<span class=muted>{e(s['reason'])}</span>"
        patient = (f"<td>{e(s.get('patient_name'))}<div class=uid>{e(s.get('patient_id'))}"
                   "</div></td>") if phi else ""
        link = f"/series/{quote(s['series_uid'], safe='')}"
        rows.append(
            f"<tr data-series='{e(s['series_uid'])}'>{patient}<td><a href='{link}'>"
            f"{e(s['description']) or '(no description)'}</a><div class=uid>"
            f"{e(s['series_uid'])}</div></td><td>{e(s['modality'])}</td>"
            f"<td>{_state(s['state'])}</td><td>{s['instances']}</td>"
            f"<td>{e(_when(s['first_received_at']))}<div class=muted>received in "
            f"{_seconds(s['first_received_at'], s['last_received_at']) or '0.0 s'}</div></td>"
            f"<td>{jobs}</td></tr>")
    head = "<th>patient</th>" if phi else ""
    return ("<section><h2>Recent series</h2><table><tr>" + head +
            "<th>series</th><th>modality</th><th>state</th><th>instances</th>"
            "<th>received</th><th>jobs (rule / model)</th></tr>"
            + ("".join(rows) or "<tr><td colspan=7>nothing received yet</td></tr>")
            + "</table></section>")


def thumbnails_html(job_id: int) -> str:
    figures = "".join(
        f"<figure><img class=thumb alt='{kind}' src='/thumb/{job_id}/{kind}.png'>"
        f"<figcaption>{caption}</figcaption></figure>"
        for kind, caption in zip(KINDS, ("before (source)", "after (derived)",
                                         "difference (after - before)"), strict=True))
    return f"<div class=thumbs>{figures}</div>"


def series_body(data: StatusData, series_uid: str) -> str | None:
    series = data.series(series_uid)
    if series is None:
        return None
    parts = [series_table(data, [series])]
    for job in series["jobs"]:
        if job["state"] in FINISHED:
            parts.append(f"<section><h2>{e(job['rule'])} / {e(job['model'])}: middle slice"
                         f"</h2>{thumbnails_html(job['id'])}</section>")
    parts.append(rules_html(data, series_uid))
    return "".join(parts)


def rules_body(data: StatusData, series_uid: str) -> str:
    options = "".join(
        f"<option value='{e(s['series_uid'])}'"
        f"{' selected' if s['series_uid'] == series_uid else ''}>"
        f"{e(s['modality'])} {e(s['description']) or '(no description)'} - "
        f"{e(s['series_uid'])}</option>" for s in data.recent_series())
    form = ("<section><h2>Rule tester</h2><form method=get action='/rules'>"
            "Pick a received series: <select name=series onchange='this.form.submit()'>"
            f"<option value=''>-</option>{options}</select> <button>Test the rules</button>"
            "</form></section>")
    return form + (rules_html(data, series_uid) if series_uid else "")


def rules_html(data: StatusData, series_uid: str) -> str:
    results, note = data.rule_test(series_uid)
    if not results and note:
        return f"<section><h2>Rules</h2><p class=error>{e(note)}</p></section>"
    blocks = []
    for result in results:
        verdict = ("<span class=ok>matches</span>" if result.matches
                   else "<span class=bad>does not match</span>")
        rows = "".join(_condition_row(c) for c in result.conditions) or \
            "<tr><td colspan=4>no conditions: matches every series</td></tr>"
        rule = result.rule
        blocks.append(
            f"<div class=rule data-rule='{e(rule.name)}' data-matches="
            f"'{'yes' if result.matches else 'no'}'><h2>{e(rule.name)} ({e(rule.model)} "
            f"-> {e(', '.join(rule.destinations))}): {verdict}</h2><table><tr>"
            "<th>keyword</th><th>expected</th><th>this series</th><th></th></tr>"
            f"{rows}</table></div>")
    warning = f"<p class=error>{e(note)}</p>" if note else ""
    return (f"<section><h2>Rules for this series</h2>{warning}"
            f"{''.join(blocks) or '<p>no rules configured</p>'}</section>")


def _condition_row(c: Condition) -> str:
    if c.hidden:
        actual = "<span class=muted>hidden (show_phi = false)</span>"
    else:
        actual = e(c.actual) or "<span class=muted>absent</span>"
    verdict = "<td class=ok>holds</td>" if c.holds else "<td class=bad>fails</td>"
    return f"<tr><td>{e(c.keyword)}</td><td>{e(c.expected)}</td><td>{actual}</td>{verdict}</tr>"


def login_body(failed: bool) -> str:
    message = "<p class=error>wrong token</p>" if failed else ""
    return ("<section><h2>Sign in</h2><p>This node's status page needs the token of "
            "<code>[http] token_file</code>.</p>" + message +
            "<form method=post action='/login'><input type=password name=token "
            "autocomplete=current-password size=40 autofocus> <button>Sign in</button>"
            "</form></section>")

