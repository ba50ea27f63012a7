"""docs/CONFORMANCE.md is what the code says, and what a running node's SCP accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom._uid_dict import UID_dictionary
from pynetdicom import AE

from dicomnode import conformance
from tests.peers import NodeProcess, echoscu

PRIVATE_CLASS = "1.2.826.0.1.3680043.9.7433.1.1"  # a private SOP class no node knows
PRIVATE_SYNTAX = "1.2.826.0.1.3680043.9.7433.1.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CHUNK = 120  # presentation contexts per association (the limit is 128)


def _uids_between(text: str, start: str, end: str) -> list[str]:
    section = text.split(start, 1)[1].split(end, 1)[0]
    return re.findall(r"^\| [^|]+ \| `([0-9.]+)` \|", section, flags=re.MULTILINE)


def _documented() -> tuple[set[str], set[str]]:
    text = conformance.DOC.read_text(encoding="utf-8")
    classes = _uids_between(text, "Accepted presentation contexts, Storage",
                            "Accepted transfer syntaxes")
    syntaxes = _uids_between(text, "Accepted transfer syntaxes", "SOP specific conformance")
    return set(classes), set(syntaxes)


def test_document_is_up_to_date() -> None:
    assert conformance.DOC.read_text(encoding="utf-8") == conformance.render(), (
        "docs/CONFORMANCE.md is stale: run python -m dicomnode.conformance")


def test_document_lists_the_spec_minimum_syntaxes_as_processed() -> None:
    """SPEC section 4's transfer syntaxes are accepted and decoded for processing."""
    _, syntaxes = _documented()
    minimum = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
               "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
               "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
               "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"}
    assert minimum <= syntaxes
    assert all(conformance.processable(uid) for uid in minimum)


def _accepted(port: int, contexts: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Propose (abstract, transfer) pairs to the node; the pairs it accepted."""
    accepted: set[tuple[str, str]] = set()
    for start in range(0, len(contexts), CHUNK):
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(conformance.VERIFICATION)  # so the association is established
        for abstract, transfer in contexts[start:start + CHUNK]:
            ae.add_requested_context(abstract, transfer)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert assoc.is_established, "the node refused the probe's association"
        try:
            accepted |= {(str(c.abstract_syntax), str(c.transfer_syntax[0]))
                         for c in assoc.accepted_contexts}
        finally:
            assoc.release()
    return accepted


@pytest.mark.network
def test_scp_accepts_exactly_the_documented_classes_and_syntaxes(tmp_path: Path) -> None:
    classes, syntaxes = _documented()
    known_classes = {uid for uid, entry in UID_dictionary.items() if entry[1] == "SOP Class"}
    known_syntaxes = {uid for uid, entry in UID_dictionary.items()
                      if entry[1] == "Transfer Syntax"}
    node = NodeProcess(tmp_path, rules="",
                       destinations=f'[[destinations]]\nname = "out"\ntype = "folder"\n'
                                    f'path = "{tmp_path / "out"}"\n')
    node.start()
    try:
        assert echoscu(node.port).returncode == 0  # DCMTK: Verification as documented
        candidates = sorted(known_classes | classes | {PRIVATE_CLASS})
        by_class = _accepted(node.port, [(uid, "1.2.840.10008.1.2") for uid in candidates])
        accepted_classes = {a for a, _ in by_class} - {conformance.VERIFICATION}
        assert accepted_classes == classes
        syntax_candidates = sorted(known_syntaxes | syntaxes | {PRIVATE_SYNTAX})
        by_syntax = _accepted(node.port, [(CT_IMAGE, uid) for uid in syntax_candidates])
        assert {t for a, t in by_syntax if a == CT_IMAGE} == syntaxes
    finally:
        assert node.stop() == 0
