"""Play the hostile corpus against a running node and against ``dicomnode enhance``.

Shared by the tests (which assert) and ``bench/hostile_report.py`` (which writes the table),
so the table in docs/RELIABILITY.md is what the tests saw, not a hand-written claim.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from dicomnode.errors import InputRejected
from dicomnode.structure import parse_header
from tests.hostile import dul
from tests.hostile.corpus import (
    EXPLICIT_LE,
    MR_STORAGE,
    Case,
    Part10,
    companion,
    good_mr_paths,
    lenient,
)
from tests.peers import read_index

MODEL = "bicubic-x2"
SUFFIX = " [dicomnode SRx2]"
# Headroom for one association's buffers; a 65535 x 65535 frame would be 8 GiB.
RSS_JUMP_LIMIT = 256 * 2**20


def node_config(folder: Path) -> tuple[str, str]:
    """(rules, destinations) for a node that enhances MR into a folder destination."""
    destination = f'[[destinations]]\nname = "out"\ntype = "folder"\npath = "{folder}"\n'
    rule = (f'[[rules]]\nname = "mr-sr"\nmatch = {{ Modality = "MR" }}\nmodel = "{MODEL}"\n'
            f'destinations = ["out"]\nseries_description_suffix = "{SUFFIX}"\n')
    return rule, destination


# -- the network --------------------------------------------------------------------------------

def send_part(port: int, part: Part10, timeout: float = 60.0) -> str:
    """C-STORE one file's dataset as received from disk; the node's answer as text."""
    assoc = dul.Association(port, contexts=((part.sop_class, (part.transfer_syntax,)),),
                            timeout=timeout)
    try:
        opened = assoc.open()
        if opened != "accepted":
            return opened
        if 1 not in assoc.accepted:
            assoc.release()
            return f"context rejected (result {assoc.rejected.get(1)})"
        response = assoc.store(1, part.dataset, part.sop_class, part.sop_uid)
    except (dul.PeerClosed, OSError) as exc:
        return f"closed ({type(exc).__name__}: {exc})"
    finally:
        if assoc.sock is not None and not assoc.release():
            assoc.close()
    return str(response)


def send_case(port: int, case: Case) -> str:
    payload = case.payload
    if payload.raw is not None:
        try:
            return payload.raw(port)
        except (dul.PeerClosed, OSError) as exc:
            return f"closed ({type(exc).__name__}: {exc})"
    return "; ".join(send_part(port, part) for part in payload.files)


COMPANION_GROUP = 10  # cases per companion series


class Companion:
    """A good series in flight during a case: one slice before it, one after, one association
    held open across it (``index`` is the case's position in the corpus)."""

    def __init__(self, port: int, index: int) -> None:
        self.parts = companion(index // COMPANION_GROUP, 2 * index)
        self.series_uid = self.parts[0].series_uid
        self.assoc = dul.Association(port, contexts=((MR_STORAGE, (EXPLICIT_LE,)),))
        self.statuses: list[str] = []

    def __enter__(self) -> Companion:
        assert self.assoc.open() == "accepted"
        self._store(self.parts[0])
        return self

    def _store(self, part: Part10) -> None:
        self.statuses.append(str(self.assoc.store(1, part.dataset, part.sop_class,
                                                  part.sop_uid)))

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._store(self.parts[1])
        self.assoc.release()


def echo(port: int) -> str:
    assoc = dul.Association(port, timeout=10)
    try:
        if assoc.open() != "accepted":
            return "not accepted"
        return str(assoc.echo())
    except (dul.PeerClosed, OSError) as exc:
        return f"failed ({exc})"
    finally:
        assoc.release()


def query(storage_dir: Path, sql: str, args: tuple = ()) -> list[tuple]:
    return read_index(storage_dir, sql, args)


@dataclass
class SpoolChecker:
    """Spool invariants: every indexed file exists, lies in the spool and parses to its row;
    nothing unindexed or half-written sits next to them; nothing is left in spool/tmp."""

    storage_dir: Path
    _verified: dict[str, tuple[int, int]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        series_dir = (self.storage_dir / "spool" / "series").resolve()
        found: list[str] = []
        indexed = set()
        for sop_uid, series_uid, path_text, size in query(
                self.storage_dir, "SELECT sop_uid, series_uid, path, size FROM instances"):
            path = Path(path_text)
            indexed.add(str(path))
            if not path.resolve().is_relative_to(series_dir):
                found.append(f"{sop_uid!r}: indexed path {path} is outside the spool")
                continue
            try:
                stat = path.stat()
            except OSError:
                found.append(f"{sop_uid!r}: indexed file {path} is missing")
                continue
            if stat.st_size != size:
                found.append(f"{sop_uid!r}: {path} has {stat.st_size} bytes, index says {size}")
            if self._verified.get(str(path)) == (stat.st_size, stat.st_mtime_ns):
                continue
            try:
                header = parse_header(path.read_bytes())
            except InputRejected as exc:
                found.append(f"{sop_uid!r}: {path} no longer parses: {exc}")
                continue
            if (header.sop_uid, header.series_uid) != (sop_uid, series_uid):
                found.append(f"{sop_uid!r}: {path} holds {header.sop_uid!r}")
                continue
            self._verified[str(path)] = (stat.st_size, stat.st_mtime_ns)
        for path in series_dir.rglob("*"):
            if path.is_file() and str(path) not in indexed:
                found.append(f"unindexed or half-written file in the spool: {path.name}")
        tmp = self.storage_dir / "spool" / "tmp"
        leftovers = list(tmp.iterdir()) if tmp.exists() else []
        if leftovers:
            found.append(f"{len(leftovers)} file(s) left in spool/tmp")
        return found


def series_outcome(storage_dir: Path, series_uid: str) -> str | None:
    """What became of a stored series once routed; None while it is still in the works."""
    rows = query(storage_dir, "SELECT state, reason FROM series WHERE series_uid = ?",
                 (series_uid,))
    if not rows:
        return "not stored"
    state, reason = rows[0]
    if state == "unrouted":
        return f"unrouted: {reason}"
    if state not in ("done", "failed"):
        return None
    jobs = query(storage_dir, "SELECT id, state, error FROM jobs WHERE series_uid = ?",
                 (series_uid,))
    parts = []
    for job_id, job_state, error in jobs:
        derived = query(storage_dir, "SELECT COUNT(DISTINCT sop_uid) FROM deliveries "
                        "WHERE job_id = ? AND state = 'sent'", (job_id,))[0][0]
        parts.append(f"{job_state}: {error}" if error else f"{job_state} ({derived} derived)")
    return "; ".join(parts) or state


def case_series(case: Case) -> list[str]:
    """The case's Series Instance UIDs as the node reads them (byte edits may change them)."""
    result = set()
    for part in case.payload.files:
        try:
            with lenient():
                result.add(parse_header(part.data).series_uid)
        except InputRejected:
            if part.series_uid:
                result.add(part.series_uid)
    return sorted(result)


def wait_series(storage_dir: Path, series_uids: Iterable[str], timeout: float) -> str:
    """Each series' outcome once final (or 'not final after N s')."""
    deadline = time.monotonic() + timeout
    outcomes = {}
    pending = list(series_uids)
    pause = _Pause()
    while pending:
        for uid in list(pending):
            outcome = series_outcome(storage_dir, uid)
            if outcome is not None:
                outcomes[uid] = outcome
                pending.remove(uid)
        if not pending or time.monotonic() > deadline:
            break
        pause.wait(0.1)
    for uid in pending:
        outcomes[uid] = f"not final after {timeout:.0f} s"
    return "; ".join(outcomes[uid] for uid in sorted(outcomes))


class _Pause:
    """A wait that is not a sleep: an Event nobody sets, waited on with a timeout."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, seconds: float) -> None:
        self._event.wait(seconds)


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


# -- one node, the whole corpus: what the tests assert and the report prints -----------------

@dataclass
class NodeSession:
    """A running node, its spool checker, and what each case got (shared across cases)."""

    port: int
    pid: int
    storage: Path
    out: Path
    log: Path
    checker: SpoolChecker = field(init=False)
    answers: dict[str, str] = field(default_factory=dict)
    companions: dict[str, int] = field(default_factory=dict)  # series UID -> slices sent

    def __post_init__(self) -> None:
        self.checker = SpoolChecker(self.storage)

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists() and "zombie" not in Path(
            f"/proc/{self.pid}/status").read_text()


@dataclass
class Verdict:
    """What the node did with a case and every way that fell short (empty: pass)."""

    case: Case
    answer: str = ""
    series: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def play_network_case(session: NodeSession, index: int, case: Case) -> Verdict:
    """Send ``case`` with a good series in flight; check echo, spool, answer and memory."""
    verdict = Verdict(case)
    peak_before = peak_rss(session.pid)
    with Companion(session.port, index) as companion:
        verdict.answer = send_case(session.port, case)
    session.answers[case.name] = verdict.answer
    session.companions[companion.series_uid] = session.companions.get(
        companion.series_uid, 0) + len(companion.parts)
    if not session.alive():
        verdict.problems.append("the node died")
        return verdict
    # Associations the case opened may take a moment to end (max_associations counts them).
    deadline = time.monotonic() + 15
    while (answer := echo(session.port)) != "0x0000" and time.monotonic() < deadline:
        _Pause().wait(0.1)
    if answer != "0x0000":
        verdict.problems.append(f"C-ECHO after the case: {answer}")
    if companion.statuses != ["0x0000", "0x0000"]:
        verdict.problems.append(f"the good series in flight got {companion.statuses}")
    verdict.problems += session.checker.problems()
    if not matches(verdict.answer, case.net):
        verdict.problems.append(f"answered {verdict.answer!r}, expected {case.net}")
    if case.watch_memory:
        if verdict.answer.startswith("0x0000"):  # let the worker meet it too
            verdict.series = wait_series(session.storage, case_series(case), 60)
        jump = peak_rss(session.pid) - peak_before
        if jump >= RSS_JUMP_LIMIT:
            verdict.problems.append(f"peak RSS grew by {jump >> 20} MiB")
    return verdict


def judge_series(session: NodeSession, verdict: Verdict) -> None:
    """Once routed: the stored case's series was processed or refused as expected."""
    case = verdict.case
    if case.job is None or not session.answers.get(case.name, "").startswith("0x0000"):
        return
    verdict.series = wait_series(session.storage, case_series(case), 60)
    if not matches(verdict.series, case.job):
        verdict.problems.append(f"series outcome {verdict.series!r}, expected {case.job}")


def companions_delivered(session: NodeSession, timeout: float = 120) -> list[str]:
    """Problems with the good series sent alongside: each must be derived and delivered."""
    def delivered() -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in session.out.rglob("*.dcm"):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            source = str(header.ReferencedSeriesSequence[0].SeriesInstanceUID)
            counts[source] = counts.get(source, 0) + 1
        return counts

    deadline = time.monotonic() + timeout
    while any(delivered().get(u, 0) < n for u, n in session.companions.items()):
        if time.monotonic() > deadline:
            break
        _Pause().wait(0.2)
    counts = delivered()
    problems = [f"companion series {u}: {counts.get(u, 0)} of {n} slices delivered"
                for u, n in session.companions.items() if counts.get(u, 0) != n]
    for uid, n in session.companions.items():
        outcome = series_outcome(session.storage, uid)
        if outcome != f"done ({n} derived)":
            problems.append(f"companion series {uid}: {outcome}")
    return problems


def judge_enhance(result: EnhanceResult, case: Case) -> list[str]:
    """Problems with what ``dicomnode enhance`` did with a case's files (empty: pass)."""
    problems = []
    if result.exit_code != 0:
        problems.append(f"exit code {result.exit_code}")
    if result.good_derived != 2:
        problems.append(f"{result.good_derived} of the 2 good files derived")
    if "Traceback" in result.stderr:
        problems.append("a traceback on stderr")
    silent = [name for name, outcome in result.outcomes.items() if outcome == "no message"]
    if silent:
        problems.append(f"no message names {silent}")
    if not matches(result.outcome, case.enhance):
        problems.append(f"said {result.outcome!r}, expected {case.enhance}")
    return problems


# -- dicomnode enhance --------------------------------------------------------------------------

@dataclass
class EnhanceResult:
    exit_code: int
    stdout: str
    stderr: str
    outcomes: dict[str, str]   # file name -> what enhance said or did about it
    good_derived: int

    @property
    def outcome(self) -> str:
        return "; ".join(f"{v}" for _, v in sorted(self.outcomes.items()))


def stage_enhance(folder: Path, cases: Iterable[Case], good: int = 2) -> dict[str, Part10]:
    """Good MR slices plus the cases' files in ``folder``; file name -> part."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in good_mr_paths()[:good]:
        shutil.copy(path, folder / f"good-{path.name}")
    staged = {}
    for case in cases:
        for part in case.payload.files:
            name = f"{case.name}-{part.name}"
            (folder / name).write_bytes(part.data)
            staged[name] = part
    return staged


def run_enhance(folder: Path, out: Path) -> tuple[int, str, str]:
    """``dicomnode enhance`` in this process (the same ``main`` the console script runs)."""
    from dicomnode.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["enhance", str(folder), str(out), "--model", MODEL, "--no-progress"])
    return code, stdout.getvalue(), stderr.getvalue()


_SKIPPED = re.compile(r"skipped file=(?P<path>\S+) reason=(?P<reason>.*)$")
_REFUSED = re.compile(r"^(?P<path>\S+): refused: (?P<reason>.*)$")
_SERIES_SKIPPED = re.compile(r"^series (?P<uid>\S+): skipped: (?P<reason>.*)$")


def enhance_outcomes(folder: Path, out: Path, staged: dict[str, Part10], code: int,
                     stdout: str, stderr: str) -> EnhanceResult:
    """Per file: 'refused: ...', 'skipped: ...', 'series skipped: ...', 'derived' or silence."""
    refused, skipped, series_skipped = {}, {}, {}
    for line in stderr.splitlines():
        if match := _REFUSED.match(line):
            refused[Path(match["path"]).name] = match["reason"]
        elif match := _SKIPPED.search(line):
            skipped[Path(match["path"]).name] = match["reason"].strip('"')
        elif match := _SERIES_SKIPPED.match(line):
            series_skipped[match["uid"]] = match["reason"]
    derived_sources: dict[str, int] = {}
    for path in out.rglob("*.dcm") if out.exists() else []:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if "SourceImageSequence" in header:
            reference = header.SourceImageSequence[0]
        else:  # an Enhanced object references its source per frame
            reference = (header.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
                         .SourceImageSequence[0])
        source = str(reference.ReferencedSOPInstanceUID)
        derived_sources[source] = derived_sources.get(source, 0) + 1
    outcomes = {}
    for name in staged:
        uids = _file_uids(folder / name)
        if name in refused:
            outcomes[name] = f"refused: {refused[name]}"
        elif name in skipped:
            outcomes[name] = f"skipped: {skipped[name]}"
        elif uids[1] in series_skipped:
            outcomes[name] = f"series skipped: {series_skipped[uids[1]]}"
        elif uids[0] in derived_sources:
            outcomes[name] = "derived"
        else:
            outcomes[name] = "no message"
    good = sum(derived_sources.get(_file_uids(p)[0], 0) for p in folder.glob("good-*"))
    return EnhanceResult(code, stdout, stderr, outcomes, good)


def _file_uids(path: Path) -> tuple[str, str]:
    with lenient():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        except Exception:  # unreadable files have no UIDs to match
            return "", ""


def enhance_case(workdir: Path, case: Case) -> EnhanceResult:
    folder, out = workdir / "in", workdir / "out"
    staged = stage_enhance(folder, [case])
    code, stdout, stderr = run_enhance(folder, out)
    return enhance_outcomes(folder, out, staged, code, stdout, stderr)


def matches(outcome: str, expected: Iterable[str] | None) -> bool:
    """Every expected substring occurs in the outcome (case-insensitive); 'a|b' means either."""
    text = outcome.lower()
    return expected is None or all(
        any(choice.lower() in text for choice in e.split("|")) for e in expected)


# -- the C-STORE handler in-process -------------------------------------------------------------

@dataclass
class FakeRequest:
    AffectedSOPInstanceUID: str | None
    AffectedSOPClassUID: str | None


@dataclass
class FakeStoreEvent:
    """What ``Receiver.handle_store`` reads of a pynetdicom event (our seam): the request, the
    calling AE, the accepted transfer syntax and the dataset bytes as received."""

    data: bytes  # the whole Part 10 file
    request: FakeRequest
    transfer_syntax: str = "1.2.840.10008.1.2.1"
    dataset_offset: int = 0
    assoc: object = field(default_factory=lambda: _FakeAssociation())

    @property
    def context(self) -> _FakeContext:
        return _FakeContext(self.transfer_syntax)

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        return self.data if include_meta else self.data[self.dataset_offset:]


@dataclass
class _FakeContext:
    transfer_syntax: str


@dataclass
class _FakeRequestor:
    ae_title: str = "FUZZER"


@dataclass
class _FakeAssociation:
    requestor: _FakeRequestor = field(default_factory=_FakeRequestor)


def store_event(part: Part10) -> FakeStoreEvent:
    """What pynetdicom hands the handler for ``part``: file meta plus the dataset bytes."""
    return FakeStoreEvent(part.data, FakeRequest(part.sop_uid, part.sop_class),
                          part.transfer_syntax, part.dataset_offset)


def status_of(result: object) -> int:
    """The status code of what ``handle_store`` returned (an int or a status Dataset)."""
    return int(result) if isinstance(result, int) else int(result.Status)  # type: ignore[attr-defined]
