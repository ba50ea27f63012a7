"""A minimal DICOM Upper Layer client (PS3.8) written for hostile tests.

pynetdicom as a client refuses to send most of what we want to send (a dataset without
SOP Class UID, a PDU cut in half, a PDV for a context that does not exist). This client
builds every PDU by hand with ``struct``, so a test decides byte by byte what the node gets.
It is a test peer independent of the node's own DICOM stack.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1380.6.1"  # the tests' own, never the node's
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030


class PeerClosed(Exception):
    """The node closed the connection (or sent an A-ABORT) before the expected answer."""


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii", "surrogateescape")
    return raw + b"\x00" if len(raw) % 2 else raw


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)[:16]


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def associate_rq(called: str, calling: str,
                 contexts: Sequence[tuple[str, Sequence[str]]], max_pdu: int = 1 << 20) -> bytes:
    """A-ASSOCIATE-RQ proposing ``contexts`` (abstract syntax, transfer syntaxes), ids 1, 3..."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for index, (abstract, syntaxes) in enumerate(contexts):
        sub = _item(0x30, abstract.encode())
        sub += b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        items += _item(0x20, struct.pack(">BBBB", 2 * index + 1, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, IMPLEMENTATION_UID.encode())
    items += _item(0x50, user)
    header = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
    return pdu(A_ASSOCIATE_RQ, header + items)


def pdv(context_id: int, data: bytes, command: bool, last: bool) -> bytes:
    control = (1 if command else 0) | (2 if last else 0)
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def command_set(elements: Iterable[tuple[int, str, object]]) -> bytes:
    """Implicit VR Little Endian group 0000, with its group length, from (element, VR, value)."""
    body = b""
    for element, vr, value in sorted(elements):
        if vr == "UI":
            raw = _uid_bytes(str(value))
        elif vr == "US":
            raw = struct.pack("<H", int(value))  # type: ignore[call-overload]
        elif vr == "UL":
            raw = struct.pack("<L", int(value))  # type: ignore[call-overload]
        else:
            raw = str(value).encode()
        body += struct.pack("<HHL", 0, element, len(raw)) + raw
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def store_command(sop_class: str, sop_uid: str | None, message_id: int = 1) -> bytes:
    elements: list[tuple[int, str, object]] = [
        (0x0002, "UI", sop_class), (0x0100, "US", C_STORE_RQ), (0x0110, "US", message_id),
        (0x0700, "US", 0), (0x0800, "US", 0x0000),
    ]
    if sop_uid is not None:
        elements.append((0x1000, "UI", sop_uid))
    return command_set(elements)


def echo_command(message_id: int = 1) -> bytes:
    return command_set([(0x0002, "UI", VERIFICATION), (0x0100, "US", C_ECHO_RQ),
                        (0x0110, "US", message_id), (0x0800, "US", 0x0101)])


def parse_command(data: bytes) -> dict[int, bytes]:
    """Element number -> raw value of an Implicit VR LE group-0000 command set."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        _, element, length = struct.unpack_from("<HHL", data, offset)
        values[element] = data[offset + 8:offset + 8 + length]
        offset += 8 + length
    return values


@dataclass
class Response:
    """A DIMSE response: its status and error comment, as the node sent them."""

    status: int
    comment: str = ""

    def __str__(self) -> str:
        text = f"0x{self.status:04X}"
        return f"{text} ({self.comment})" if self.comment else text


@dataclass
class Association:
    """One association: ``open`` negotiates, then raw PDUs or whole C-STOREs can be sent."""

    port: int
    called: str = "DICOMNODE"
    calling: str = "HOSTILE"
    contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_LE,)),)
    max_pdu: int = 1 << 20
    timeout: float = 30.0
    accepted: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, int] = field(default_factory=dict)
    sock: socket.socket | None = None

    def connect(self) -> socket.socket:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def open(self) -> str:
        """Negotiate; returns 'accepted', 'rejected (result/source/reason)' or 'aborted'."""
        self.connect()
        self.send(associate_rq(self.called, self.calling, self.contexts, self.max_pdu))
        pdu_type, body = self.read_pdu()
        if pdu_type == A_ASSOCIATE_RJ:
            _, result, source, reason = struct.unpack(">BBBB", body[:4])
            return f"association rejected (result {result}, source {source}, reason {reason})"
        if pdu_type != A_ASSOCIATE_AC:
            return f"association answered with PDU type 0x{pdu_type:02X}"
        self._read_contexts(body[68:])
        return "accepted"

    def _read_contexts(self, items: bytes) -> None:
        offset = 0
        while offset + 4 <= len(items):
            item_type, _, length = struct.unpack_from(">BBH", items, offset)
            body = items[offset + 4:offset + 4 + length]
            if item_type == 0x21:
                context_id, result = body[0], body[2]
                if result == 0:
                    syntax = body[8:8 + struct.unpack_from(">H", body, 6)[0]]
                    self.accepted[context_id] = syntax.decode().rstrip("\x00")
                else:
                    self.rejected[context_id] = result
            offset += 4 + length

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def read_exact(self, count: int) -> bytes:
        assert self.sock is not None
        chunks = bytearray()
        while len(chunks) < count:
            chunk = self.sock.recv(min(count - len(chunks), 1 << 16))
            if not chunk:
                raise PeerClosed("connection closed by the node")
            chunks += chunk
        return bytes(chunks)

    def read_pdu(self) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBL", self.read_exact(6))
        return pdu_type, self.read_exact(length)

    def read_response(self) -> Response:
        """Collect command PDVs until the last fragment; an A-ABORT raises PeerClosed."""
        command = b""
        while True:
            pdu_type, body = self.read_pdu()
            if pdu_type == A_ABORT:
                raise PeerClosed("the node sent A-ABORT")
            if pdu_type != P_DATA_TF:
                raise PeerClosed(f"the node sent PDU type 0x{pdu_type:02X} instead of a response")
            offset = 0
            while offset + 6 <= len(body):
                length, _, control = struct.unpack_from(">LBB", body, offset)
                command += body[offset + 6:offset + 4 + length]
                offset += 4 + length
                if control & 0x03 == 0x03:
                    values = parse_command(command)
                    status = struct.unpack("<H", values.get(0x0900, b"\xff\xff")[:2])[0]
                    comment = values.get(0x0902, b"").decode("ascii", "replace").strip(" \x00")
                    return Response(status, comment)

    def send_dataset(self, context_id: int, command: bytes, dataset: bytes,
                     fragment: int = 1 << 16) -> None:
        """The command in one PDV, the dataset in ``fragment``-byte PDVs (last one flagged)."""
        self.send(pdu(P_DATA_TF, pdv(context_id, command, command=True, last=True)))
        chunks = [dataset[i:i + fragment] for i in range(0, len(dataset), fragment)] or [b""]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            self.send(pdu(P_DATA_TF, pdv(context_id, chunk, command=False, last=last)))

    def store(self, context_id: int, dataset: bytes, sop_class: str, sop_uid: str | None,
              fragment: int = 1 << 16) -> Response:
        self.send_dataset(context_id, store_command(sop_class, sop_uid), dataset, fragment)
        return self.read_response()

    def echo(self, context_id: int = 1) -> Response:
        self.send(pdu(P_DATA_TF, pdv(context_id, echo_command(), command=True, last=True)))
        return self.read_response()

    def release(self) -> bool:
        """A-RELEASE; True when the node answered A-RELEASE-RP."""
        try:
            self.send(pdu(A_RELEASE_RQ, bytes(4)))
            pdu_type, _ = self.read_pdu()
            return pdu_type == A_RELEASE_RP
        except (OSError, PeerClosed):
            return False
        finally:
            self.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.send(pdu(A_ABORT, bytes(4)))
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def wait_closed(self) -> str:
        """What the node does next: 'closed', or the PDU type it sends (within the timeout)."""
        try:
            pdu_type, _ = self.read_pdu()
        except PeerClosed:
            return "closed"
        except TimeoutError:
            return "still open"
        except OSError as exc:
            return f"closed ({type(exc).__name__})"
        return {A_ABORT: "A-ABORT", A_RELEASE_RQ: "A-RELEASE-RQ", A_RELEASE_RP: "A-RELEASE-RP"}.get(
            pdu_type, f"PDU 0x{pdu_type:02X}")
