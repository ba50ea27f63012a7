"""The DICOM conformance statement (``docs/CONFORMANCE.md``), written from the code.

The tables a PACS administrator checks before connecting (SOP classes and transfer syntaxes
as SCP and SCU, status codes, association parameters, configuration defaults) are read from
the objects the node itself uses, so the document cannot drift from the program:

- SCP: the presentation contexts of :func:`dicomnode.scp.build_ae`;
- SCU: what :func:`dicomnode.scu.send_dicom` really proposes, observed by a capturing SCP on
  loopback (nothing in the sender is parsed or copied);
- defaults: the config dataclasses.

``python -m dicomnode.conformance`` rewrites the file; ``--check`` exits 1 when it is stale.
``tests/test_conformance.py`` checks the file against a running node's SCP.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import ssl
import sys
from collections.abc import Iterable
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, evt

from dicomnode import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    __version__,
    dicomweb,
    outcomes,
    pixels,
    scp,
    scu,
)
from dicomnode.config import HttpConfig, NodeConfig, WorkerConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFORMANCE.md"
VERIFICATION = "1.2.840.10008.1.1"
# Classes proposed by the probe: one classic and one enhanced class the worker derives.
PROBE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4.1")


# -- facts read from the code -----------------------------------------------------------------

def scp_contexts() -> dict[str, tuple[str, ...]]:
    """Abstract syntax -> transfer syntaxes the SCP accepts, from the node's own AE."""
    ae = scp.build_ae(NodeConfig())
    return {str(c.abstract_syntax): tuple(str(t) for t in c.transfer_syntax)
            for c in ae.supported_contexts}


def scp_storage_classes() -> list[str]:
    return sorted((uid for uid in scp_contexts() if uid != VERIFICATION), key=_name_key)


def scp_transfer_syntaxes() -> list[str]:
    """The syntaxes accepted for storage (every storage class accepts the same list)."""
    contexts = scp_contexts()
    syntaxes = {contexts[uid] for uid in contexts if uid != VERIFICATION}
    if len(syntaxes) != 1:
        raise RuntimeError("storage classes accept different transfer syntaxes: "
                           "the conformance tables assume one list")
    return list(next(iter(syntaxes)))


def processable(syntax: str) -> bool:
    """Whether the worker decodes pixels in this syntax (pixels.py's codestream checks)."""
    uid = UID(syntax)
    if not uid.is_compressed:
        return True
    return syntax == pixels._RLE or syntax in pixels._JPEG | pixels._JPEG_LS | pixels._JPEG_2000


def scu_proposed_syntaxes(classes: Iterable[str] = PROBE_CLASSES) -> dict[str, tuple[str, ...]]:
    """Abstract syntax -> transfer syntaxes that ``send_dicom`` proposes, as seen by a peer.

    A capturing SCP on a free loopback port records the A-ASSOCIATE-RQ; the send itself then
    fails (the delivery files do not exist), which is all the probe needs.
    """
    from dicomnode.config import Destination
    from dicomnode.spool import Delivery

    seen: dict[str, tuple[str, ...]] = {}

    def requested(event: evt.Event) -> None:
        for context in event.assoc.requestor.requested_contexts:
            seen[str(context.abstract_syntax)] = tuple(str(t) for t in context.transfer_syntax)

    probe = AE(ae_title="PROBE")
    for uid in classes:
        probe.add_supported_context(uid, list(DEFAULT_TRANSFER_SYNTAXES))
    port = _free_port()
    server = probe.start_server(("127.0.0.1", port), block=False,
                                evt_handlers=[(evt.EVT_REQUESTED, requested)])
    try:
        destination = Destination("probe", "dicom", "PROBE", "127.0.0.1", port, "DICOMNODE")
        missing = Path("/nonexistent/dicomnode-conformance-probe.dcm")
        deliveries = [Delivery(i, 0, "probe", f"2.25.{i + 1}", uid, missing, 0, None)
                      for i, uid in enumerate(classes)]
        scu.send_dicom(destination, deliveries, timeout=5.0)
    finally:
        server.shutdown()
    if not seen:
        raise RuntimeError("the SCU probe saw no association request")
    return seen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _name_key(uid: str) -> tuple[str, str]:
    return (UID(uid).name.casefold(), uid)


def _name(uid: str) -> str:
    return UID(uid).name if UID(uid).name != uid else "(unnamed)"


def _table(header: tuple[str, ...], rows: Iterable[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _defaults(cls: type, section: str) -> list[tuple[str, str]]:
    rows = []
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if value is None:
            continue
        shown = list(value) if isinstance(value, tuple) else value
        rows.append((f"`{section}.{f.name}`", f"`{shown}`"))
    return rows


# -- the document ---------------------------------------------------------------------------

def render() -> str:
    """The whole statement as Markdown (deterministic: no dates, no host names)."""
    contexts = scp_contexts()
    classes = scp_storage_classes()
    syntaxes = scp_transfer_syntaxes()
    proposed = scu_proposed_syntaxes()
    scu_syntaxes = sorted(set(proposed.values()))
    if len(scu_syntaxes) != 1:
        raise RuntimeError("the SCU proposes different syntaxes per class; extend the tables")
    scu_list = scu_syntaxes[0]
    ae = scp.build_ae(NodeConfig())
    tls_minimum = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).minimum_version.name
    verification_syntaxes = contexts[VERIFICATION]
    values = {
        "version": __version__,
        "impl_uid": IMPLEMENTATION_CLASS_UID,
        "impl_name": IMPLEMENTATION_VERSION_NAME,
        "n_classes": len(classes),
        "n_syntaxes": len(syntaxes),
        "n_processed": sum(processable(s) for s in syntaxes),
        "max_assoc": NodeConfig().max_associations,
        "acse_timeout": ae.acse_timeout,
        "network_timeout": ae.network_timeout,
        "dimse_timeout": ae.dimse_timeout,
        "scu_dimse_timeout": scu.DIMSE_TIMEOUT,
        "batch": scu.BATCH_SIZE,
        "max_contexts": scu.MAX_CONTEXTS,
        "backoff_first": scu.BACKOFF_FIRST,
        "backoff_max": scu.BACKOFF_MAX,
        "tls_minimum": tls_minimum.replace("TLSv1_", "TLS 1."),
        "ok": scp.STATUS_SUCCESS,
        "oor": scp.STATUS_OUT_OF_RESOURCES,
        "mismatch": scp.STATUS_DATASET_MISMATCH,
        "cannot": scp.STATUS_CANNOT_UNDERSTAND,
        "stow_mib": dicomweb.MAX_REQUEST_BYTES // 2**20,
        "transient_http": ", ".join(str(c) for c in sorted(dicomweb.TRANSIENT_HTTP)),
        "warning_statuses": ", ".join(f"0x{c:04X}" for c in sorted(outcomes.WARNING_STATUSES)),
    }
    sections = [
        _HEAD.format(**values),
        _SCU.format(**values),
        "Proposed presentation contexts:\n\n" + _table(
            ("Abstract syntax", "Transfer syntaxes, in order of preference", "Role"),
            [("the SOP class of each derived instance (one context per class in the batch)",
              ", ".join(f"{_name(t)} `{t}`" for t in scu_list), "SCU"),
             ("Verification (`dicomnode echo`)",
              ", ".join(f"{_name(t)} `{t}`" for t in DEFAULT_TRANSFER_SYNTAXES), "SCU")]),
        _SCU_STATUS.format(**values),
        _AE_SPEC.format(**values),
        "Accepted presentation contexts, Verification:\n\n" + _table(
            ("Abstract syntax", "UID", "Transfer syntaxes", "Role"),
            [("Verification", f"`{VERIFICATION}`",
              ", ".join(_name(t) for t in verification_syntaxes), "SCP")]),
        f"Accepted presentation contexts, Storage ({len(classes)} SOP classes):\n\n"
        "Every SOP class below is accepted with every transfer syntax of the next table, "
        "in the SCP role, without extended negotiation.\n\n" + _table(
            ("SOP class", "UID"), [(_name(uid), f"`{uid}`") for uid in classes]),
        f"Accepted transfer syntaxes ({len(syntaxes)}):\n\n"
        "*Processed* says whether the worker decodes the pixel data for a rule's model; "
        "an instance in any other accepted syntax is stored, kept for `retention_hours` "
        "and its job fails with the reason (`dicomnode status`).\n\n" + _table(
            ("Transfer syntax", "UID", "Processed"),
            [(_name(t), f"`{t}`", "yes" if processable(t) else "stored only")
             for t in syntaxes]),
        _SCP_STATUS.format(**values),
        _NETWORK.format(**values),
        "### 4.4 Configuration\n\nAE title and port are set in `config.toml` "
        "(`dicomnode init DIR` writes a commented one); its defaults:\n\n" + _table(
            ("key", "default"),
            _defaults(NodeConfig, "node") + _defaults(HttpConfig, "http")
            + _defaults(WorkerConfig, "worker")),
        _REST.format(**values),
    ]
    return "\n\n".join(s.strip("\n") for s in sections) + "\n"


_HEAD = """
# DICOM Conformance Statement: dicomnode {version}

<!-- Generated by `python -m dicomnode.conformance` from the code (dicomnode/conformance.py);
     edit the template there, not this file. tests/test_conformance.py checks it against a
     running node. -->

## 1. Conformance statement overview

dicomnode is a DICOM processing node beside a PACS. It receives images (Storage SCP),
enhances them with neural networks or classical filters, and sends the results back as new,
clearly labelled derived series (Storage SCU) next to the untouched originals.

| Networking: SOP classes | User of service (SCU) | Provider of service (SCP) |
| --- | --- | --- |
| Verification | yes (`dicomnode echo`) | yes |
| Storage: {n_classes} SOP classes (section 4.2.1.4) | yes: derived instances keep their source's SOP class | yes |
| Query/Retrieve, Worklist, Storage Commitment, MPPS | no | no |
| DICOMweb STOW-RS (PS3.18) | yes (user agent, `type = "dicomweb"`) | no |

Media interchange: none (a `folder` destination writes DICOM Part 10 files, with no
DICOMDIR; it is not a Media Storage Application Profile).

## 2. Table of contents

1. Conformance statement overview; 3. Introduction; 4. Networking (4.1 implementation model,
4.2 AE specifications, 4.3 network interfaces, 4.4 configuration); 5. Media interchange;
6. Character sets; 7. Security; 8. Annexes (IOD contents of created instances).

## 3. Introduction

- Audience: PACS administrators and integrators connecting modalities, routers and archives.
- Remarks: this statement covers the DICOM interfaces (DIMSE, and STOW-RS as a sender). The
  HTTP status server (status page at `/`, `/healthz`, `/metrics`, `/api/series`) is not DICOM
  and is described in `docs/OPERATIONS.md`.
- References: NEMA PS3.2 (Conformance), PS3.4 (Service Class Specifications), PS3.7
  (Message Exchange), PS3.8 (Network Communication), PS3.15 (Security Profiles).

## 4. Networking

### 4.1 Implementation model

#### Application data flow

```
modality / router --C-STORE--> [DICOMNODE AE, SCP] --> spool (disk + SQLite index)
                                                         | series stable
                                                         v
                                   rules -> worker (model) -> derived series
                                                         v
                    [DICOMNODE AE, SCU] --C-STORE--> PACS (one queue per destination)
```

#### Functional definition of the AE

One Application Entity (default AE title `DICOMNODE`, `node.ae_title`) is both SCP and SCU.
As SCP it answers Success only after the instance is durable on disk (write-ahead log,
fdatasync) and indexed, and never changes the instance. A series is *stable* after
`node.series_idle_seconds` without a new instance; every configured rule whose `match` holds
then makes one derived series, which is queued for each of the rule's destinations and sent
by the SCU.

#### Sequencing of real-world activities

The SCU sends a derived series only after the whole source series was stable and processed.
The same source series received again (same SOP Instance UIDs) is not processed twice; a new
instance in a finished series re-opens it, and the re-run yields the same derived UIDs, so
the destination sees replacements, not duplicates.

### 4.2 AE specifications

#### 4.2.1 DICOMNODE AE

##### 4.2.1.1 SOP classes

As SCP: Verification and every Storage SOP class of section 4.2.1.4. As SCU: the Storage SOP
class of each derived instance (its source's), and Verification.

##### 4.2.1.2 Association policies: implementation identifying information

| | value |
| --- | --- |
| Implementation Class UID | `{impl_uid}` |
| Implementation Version Name | `{impl_name}` |
| Application Context Name | `1.2.840.10008.3.1.1.1` (DICOM Application Context) |
"""

_AE_SPEC = """
##### 4.2.1.4 Association acceptance policy (SCP)

General:

| | value |
| --- | --- |
| Maximum number of simultaneous associations | `node.max_associations` (default {max_assoc}); more are rejected transiently |
| Maximum PDU size received | unlimited (the node advertises 0) |
| Asynchronous operations window | not supported (one operation at a time per association) |
| Called AE title | must equal `node.ae_title`; otherwise rejected permanently (called AE title not recognised) |
| Calling AE title | any, or only those in `node.allowed_calling_aets` when it is not empty (rejected permanently otherwise) |
| ACSE / network timeout | {acse_timeout} s / {network_timeout} s |
| DIMSE timeout | {dimse_timeout} s |
| SCP/SCU role selection, extended negotiation | not supported (default roles) |
"""

_SCP_STATUS = """
SOP specific conformance, Storage SCP:

Conformance level: level 2 (full) as to storage: every element of a received instance is
kept byte for byte, including private elements; the file is replaced only when the same SOP
Instance UID arrives again. Originals are deleted `node.retention_hours` after their series
finished. Received instances are never modified; derived objects are new instances.

| Status | Code | When |
| --- | --- | --- |
| Success | `0x{ok:04X}` | after the instance is durable on disk (write-ahead log, fdatasync) and in the index |
| Refused: out of resources | `0x{oor:04X}` | free disk below `node.min_free_disk_mb`, or a write error |
| Error: data set does not match SOP class | `0x{mismatch:04X}` | SOP Instance/Class UID in the data set differ from the C-STORE request |
| Error: cannot understand | `0x{cannot:04X}` | the data set cannot be parsed, or lacks a UID the index needs; the Error Comment says which |

Objects this node produced (recognised by its Contributing Equipment item, manufacturer
`dicomnode`) are stored but never processed again, so a PACS that forwards everything back
makes no loop.

SOP specific conformance, Verification SCP:

C-ECHO is answered Success while the node runs.
"""

_SCU = """
##### 4.2.1.3 Association initiation policy (SCU)

Activity, send a derived series:

Each `[[destinations]]` entry of `type = "dicom"` has its own queue and sender. Up to
{batch} instances are sent per association (at most {max_contexts} presentation contexts,
one per SOP class in the batch), with the destination's `ae_title` as called and its
`calling_ae_title` (default `node.ae_title`) as calling AE title. DIMSE timeout
{scu_dimse_timeout:g} s. A destination may require DICOM TLS (`[destinations.tls]`).
"""

_SCU_STATUS = """
SOP specific conformance, Storage SCU:

| Response | Behaviour |
| --- | --- |
| Success `0x0000`, warnings {warning_statuses} | the instance counts as delivered |
| Out of resources `0xA7xx`, no response, association aborted, connection refused, transient rejection | retried after {backoff_first:g} s, doubling to {backoff_max:g} s, until `node.retention_hours` after the first try; a lost response means a resend of the same SOP Instance UID on a new association |
| `0xA9xx`, `0xCxxx`, other failures, permanent association rejection | the delivery fails at once with the reason (`dicomnode status`, `dicomnode retry`) |

Derived objects stay on disk until every destination acknowledged them. A resend carries the
same SOP Instance UID (derived UIDs are deterministic), so a PACS replaces, never duplicates.

Activity, send over DICOMweb (not a DICOM association): a `type = "dicomweb"` destination
gets STOW-RS requests (PS3.18, `POST {{url}}/studies`, `multipart/related;
type="application/dicom"`, one part per derived object), at most {stow_mib} MiB per request,
with `Authorization: Bearer` and the token of `auth_file` when set. Each instance is judged
from the response: in ReferencedSOPSequence it is delivered; in FailedSOPSequence its
FailureReason is classified as in the table above; absent from both, or no response at all
(connection lost, timeout, HTTP {transient_http}), it is retried with the same backoff; other
HTTP errors (400, 401, 403, 404 ...) fail the delivery at once.
"""

_NETWORK = """
### 4.3 Network interfaces

TCP/IP (DICOM Upper Layer, PS3.8) on the interface and port of `node.host` / `node.port`
(default all interfaces, port 11112). IPv4; IPv6 where the host name resolves to it.
"""

_REST = """
## 5. Media interchange

Not supported.

## 6. Support of character sets

The node does not interpret text values: a derived instance carries its source's Specific
Character Set (0008,0005) and values unchanged; the values it adds (series description
suffix, derivation description, equipment) are plain ASCII.

## 7. Security

- Association level: the called AE title is checked; `node.allowed_calling_aets` restricts
  calling AE titles (empty accepts any and logs a warning at start).
- Transport: with `[node.tls]` the SCP speaks DICOM TLS only (PS3.15 Basic/BCP 195 TLS
  Secure Transport Connection Profiles; minimum protocol {tls_minimum}, the Python `ssl`
  defaults for ciphers); with `node.tls.ca`, client certificates are required and verified.
  Destinations may require TLS with server verification (`[destinations.tls]`), optionally
  presenting a client certificate.
- HTTP status server: loopback only by default; on any other interface `[http] token_file`
  is required and every request but `/healthz` needs `Authorization: Bearer <token>` (or
  the session cookie of the sign-in form). Patient names and IDs appear on the status page
  only with `[http] show_phi = true`.
- Logs carry UIDs and AE titles, never patient names or IDs at INFO level.

## 8. Annexes

### 8.1 IOD contents of created SOP instances

One derived instance per source image, in the source's SOP class (Enhanced MR/CT keep their
IOD, with per-frame functional groups updated):

| Attribute | Value |
| --- | --- |
| Patient, Study, Frame of Reference, Equipment modules | copied unchanged from the source |
| SeriesInstanceUID, SOPInstanceUID | new and deterministic: `2.25.` + a UUIDv5 over (source UID, rule, model, model version) |
| ImageType | `DERIVED\\SECONDARY`, later values of the source kept |
| DerivationDescription (0008,2111) | what was done, model name and version; "AI-processed, compare with source series" |
| DerivationCodeSequence (0008,9215) | DCM `113085` "Spatial resampling" (super-resolution), `113087` "Smoothing" (denoising) |
| SourceImageSequence (0008,2112) | one item per source image, purpose DCM `121322`; Spatial Locations Preserved `YES` for denoising, `NO` for super-resolution |
| ReferencedSeriesSequence | the source series |
| ContributingEquipmentSequence (0018,A001) | Manufacturer `dicomnode`, Software Versions, Contribution DateTime and Description, purpose DCM `109102` "Processing Equipment" |
| SeriesNumber, SeriesDescription | source + 1000; source description + the rule's suffix |
| Rows, Columns, PixelSpacing, ImagePositionPatient | scaled for super-resolution so the image covers the same physical extent |
| Pixel module, Rescale, Window | kept; values clipped to the stored range; LossyImageCompression stays `01` once the source was lossy |
| Overlays, icon images, curves, private pixel-related groups | dropped |

### 8.2 Private SOP classes and transfer syntaxes

None.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.conformance",
                                     description="write docs/CONFORMANCE.md from the code")
    parser.add_argument("--output", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the file differs from what the code says")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m dicomnode.conformance",
                  file=sys.stderr)
            return 1
        print(f"{args.output}: up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
