"""A small client for The Cancer Imaging Archive's public NBIA REST API (v1, no login).

Endpoints used (all GET, JSON unless noted):
``getCollectionValues`` -> ``[{"Collection": ...}]``;
``getSeries?Collection=C[&Modality=M]`` -> one object per series (SeriesInstanceUID,
StudyInstanceUID, PatientID, Modality, ImageCount, LicenseName, LicenseURI, ...);
``getImage?SeriesInstanceUID=U`` -> a zip of the series' DICOM files.

Downloads are resumable twice over: finished series are recorded in ``manifest.json`` and
skipped next time, and an interrupted zip continues from its ``.part`` file with an HTTP Range
request (restarted from zero when the server ignores it). Every zip is tested, every member must
be DICOM of the series asked for, and the count must match ImageCount; a series that fails is
deleted, never half kept. Retries are polite: exponential backoff on connection errors, 429 and
5xx, honouring Retry-After, a bounded number of times.

We use ``requests`` (one well-kept dependency) rather than ``tcia_utils``: the latter is built
for notebooks (pandas, plotting, IPython imports), downloads without resume or per-file
verification, and would pull a large dependency tree into the training module.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
import requests

log = logging.getLogger(__name__)

BASE_URL = "https://services.cancerimagingarchive.net/nbia-api/services/v1"
"""TCIA's public NBIA search API, v1 (no token needed for public collections)."""
MANIFEST = "manifest.json"
USER_AGENT = "dicomnode-train (research data download)"
RETRY_STATUS = {429, 500, 502, 503, 504}


class TciaError(Exception):
    """The API could not be reached or answered something unusable (after retries)."""


@dataclass
class TciaClient:
    """NBIA v1 client. ``sleep`` is injectable so tests never wait."""

    base_url: str = BASE_URL
    retries: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 120.0
    timeout_s: float = 120.0
    sleep: Callable[[float], None] = time.sleep
    session: requests.Session | None = None

    def __post_init__(self) -> None:
        if self.session is None:
            self.session = requests.Session()
            self.session.headers["User-Agent"] = USER_AGENT
        self.base_url = self.base_url.rstrip("/")

    def _get(self, endpoint: str, params: dict[str, str], *, stream: bool = False,
             headers: dict[str, str] | None = None) -> requests.Response:
        """GET with retries on connection errors, 429 and 5xx; raises TciaError at the end."""
        url = f"{self.base_url}/{endpoint}"
        assert self.session is not None
        for attempt in range(self.retries + 1):
            try:
                response = self.session.get(url, params=params, stream=stream,
                                            headers=headers, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem, wait = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code not in RETRY_STATUS:
                    if response.status_code >= 400:
                        raise TciaError(f"{endpoint}: HTTP {response.status_code} "
                                        f"{response.reason} for {response.url}")
                    return response
                problem = f"HTTP {response.status_code}"
                wait = _retry_after(response.headers.get("Retry-After"))
                response.close()
            if attempt == self.retries:
                raise TciaError(f"{endpoint}: {problem} (gave up after {attempt + 1} tries)")
            delay = wait if wait is not None else min(self.max_backoff_s,
                                                      self.backoff_s * 2**attempt)
            log.info("tcia %s: %s; retry %d/%d in %.0f s", endpoint, problem, attempt + 1,
                     self.retries, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _json(self, endpoint: str, params: dict[str, str]) -> list[dict[str, Any]]:
        response = self._get(endpoint, {**params, "format": "json"})
        if not response.content.strip():
            return []  # NBIA answers an empty body when nothing matches
        try:
            data = response.json()
        except ValueError as exc:
            raise TciaError(f"{endpoint}: the answer is not JSON: {exc}") from None
        if not isinstance(data, list):
            raise TciaError(f"{endpoint}: expected a JSON list, got {type(data).__name__}")
        return data

    def collections(self) -> list[str]:
        """Names of the public collections, sorted."""
        return sorted(str(item["Collection"]) for item in self._json("getCollectionValues", {})
                      if "Collection" in item)

    def series(self, collection: str, modality: str | None = None) -> list[dict[str, Any]]:
        """Series of a collection (optionally one modality), sorted by SeriesInstanceUID."""
        params = {"Collection": collection}
        if modality:
            params["Modality"] = modality
        rows = self._json("getSeries", params)
        return sorted(rows, key=lambda r: str(r.get("SeriesInstanceUID", "")))

    def fetch_zip(self, series_uid: str, target: Path) -> Path:
        """Download the series zip to ``target``, continuing a ``.part`` file if there is one.

        An interrupted transfer is retried with a Range request from the bytes already on disk;
        a server that answers 200 instead of 206 sends the whole file again.
        """
        part = target.with_name(target.name + ".part")
        for attempt in range(self.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else None
            response = self._get("getImage", {"SeriesInstanceUID": series_uid}, stream=True,
                                 headers=headers)
            mode = "ab" if have and response.status_code == 206 else "wb"
            try:
                with response, part.open(mode) as handle:
                    for block in response.iter_content(chunk_size=1 << 16):
                        handle.write(block)
                    expected = response.headers.get("Content-Length")
                    if expected is not None and response.status_code in (200, 206):
                        written = handle.tell() - (have if mode == "ab" else 0)
                        if written < int(expected):
                            raise requests.ConnectionError(
                                f"connection closed after {written} of {expected} bytes")
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.Timeout) as exc:
                if attempt == self.retries:
                    raise TciaError(f"getImage {series_uid}: {exc} (partial download kept in "
                                    f"{part}; run again to resume)") from None
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                log.info("tcia getImage: %s; resuming in %.0f s", exc, delay)
                self.sleep(delay)
                continue
            os.replace(part, target)
            return target
        raise AssertionError("unreachable")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _licence_member(name: str) -> bool:
    base = PurePosixPath(name).name.lower()
    return base.startswith("licen") or base.endswith(".txt")


def extract_verified(zip_path: Path, series_uid: str, dest: Path,
                     expected_count: int | None) -> int:
    """Unpack a series zip into ``dest`` after checking it; returns the number of DICOM files.

    Refuses damaged zips, members that are not DICOM or belong to another series, and a count
    that differs from the API's ImageCount. Member names are reduced to their base names, so a
    zip cannot write outside ``dest``.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise TciaError(f"series {series_uid}: the download is not a valid zip ({exc})") from None
    with archive:
        bad = archive.testzip()
        if bad is not None:
            raise TciaError(f"series {series_uid}: zip member {bad!r} is corrupt (CRC error)")
        tmp = dest.with_name(dest.name + ".tmp")
        if tmp.exists():
            for old in tmp.iterdir():
                old.unlink()
        tmp.mkdir(parents=True, exist_ok=True)
        count = 0
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = PurePosixPath(info.filename).name
            if not name or name in (".", ".."):
                continue
            data = archive.read(info)
            if _licence_member(name):
                (tmp / name).write_bytes(data)
                continue
            target = tmp / name
            target.write_bytes(data)
            try:
                ds = pydicom.dcmread(target, stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types for non-DICOM bytes
                raise TciaError(f"series {series_uid}: zip member {name!r} is not DICOM "
                                f"({type(exc).__name__})") from None
            if str(ds.get("SeriesInstanceUID", "")) != series_uid:
                raise TciaError(f"series {series_uid}: zip member {name!r} belongs to series "
                                f"{ds.get('SeriesInstanceUID')!r}")
            count += 1
    if count == 0:
        raise TciaError(f"series {series_uid}: the zip holds no DICOM file")
    if expected_count is not None and count != expected_count:
        raise TciaError(f"series {series_uid}: {count} DICOM files, the API says "
                        f"{expected_count}")
    if dest.exists():
        for old in dest.iterdir():
            old.unlink()
        dest.rmdir()
    os.replace(tmp, dest)
    return count


def _load_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if path.is_file():
        return json.loads(path.read_text())
    return {"source": "The Cancer Imaging Archive (NBIA REST API v1)", "series": {}}


def _save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / MANIFEST)


def download(client: TciaClient, collection: str, out: Path, modality: str | None = None,
             max_series: int | None = None) -> dict[str, Any]:
    """Download (or finish downloading) series of a collection into ``out/COLLECTION/UID/``.

    Returns the manifest; series that failed are listed under ``failed`` with the reason and
    are retried on the next run.
    """
    out.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(out)
    rows = client.series(collection, modality)
    if max_series is not None:
        rows = rows[:max_series]
    failed: dict[str, str] = {}
    for row in rows:
        uid = str(row["SeriesInstanceUID"])
        folder = out / _safe(collection) / _safe(uid)
        entry = manifest["series"].get(uid)
        if entry and entry.get("status") == "complete" and folder.is_dir():
            log.info("series %s: already downloaded", uid)
            continue
        zip_path = out / _safe(collection) / f"{_safe(uid)}.zip"
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.fetch_zip(uid, zip_path)
            count = extract_verified(zip_path, uid, folder, _int(row.get("ImageCount")))
        except TciaError as exc:
            log.warning("%s", exc)
            failed[uid] = str(exc)
            if zip_path.exists():  # a complete but bad zip: fetch it afresh next time
                zip_path.unlink()
            continue
        zip_path.unlink()
        manifest["series"][uid] = {
            "collection": collection, "series_uid": uid,
            "study_uid": row.get("StudyInstanceUID"), "modality": row.get("Modality"),
            "patient_id": row.get("PatientID"), "files": count,
            "licence": row.get("LicenseName") or "unknown: see the collection's TCIA page",
            "licence_uri": row.get("LicenseURI"), "collection_uri": row.get("CollectionURI"),
            "path": str(folder.relative_to(out)), "status": "complete",
        }
        _save_manifest(out, manifest)
        log.info("series %s: %d files", uid, count)
    manifest["failed"] = failed
    _save_manifest(out, manifest)
    return manifest


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _safe(text: str) -> str:
    """A file name from an API value: no separators, no '..'."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip(".")
    return cleaned or "_"


def run_cli(args: Any) -> int:
    """``dicomnode-train tcia ...``: print collections or series, or download."""
    client = TciaClient(base_url=args.base_url or BASE_URL)
    try:
        if args.tcia_command == "collections":
            print("\n".join(client.collections()))
            return 0
        if args.tcia_command == "series":
            rows = client.series(args.collection, args.modality)
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                for r in rows:
                    print(f"{r.get('SeriesInstanceUID')}  {r.get('Modality', '')}  "
                          f"{r.get('ImageCount', '?')} images  {r.get('LicenseName', '')}")
            return 0
        manifest = download(client, args.collection, args.out, args.modality, args.max_series)
    except TciaError as exc:
        print(f"dicomnode-train tcia: {exc}", file=sys.stderr)
        return 1
    done = sum(1 for e in manifest["series"].values() if e.get("status") == "complete")
    print(f"{done} series complete in {args.out} (manifest: {args.out / MANIFEST})")
    if manifest["failed"]:
        print(f"{len(manifest['failed'])} series failed; run again to retry:",
              *manifest["failed"], sep="\n  ")
        return 1
    return 0
