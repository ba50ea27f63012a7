"""DICOM TLS on the SCP and towards a destination, with certificates made by the test."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import MR_DIR
from tests.node.conftest import sr_rule
from tests.peers import NodeProcess, Orthanc, storescu, wait_for

pytestmark = [pytest.mark.network]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem",
                 cwd=d)
        (d / f"{name}.key").chmod(0o600)
    return d


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    tls = (context, "127.0.0.1") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", tls_args=tls)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def _client(pki: Path, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki / "ca.pem")
    if with_certificate:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return context


def test_scp_speaks_tls_only_and_requires_client_certificates(pki: Path, tmp_path: Path):
    tls = (f'[node.tls]\ncert = "{pki / "server.pem"}"\nkey = "{pki / "server.key"}"\n'
           f'ca = "{pki / "ca.pem"}"\n')
    node = NodeProcess(tmp_path, "", "", node_extra=tls)
    node.start()
    try:
        assert _echo(node.port, _client(pki, with_certificate=True))
        assert not _echo(node.port, _client(pki, with_certificate=False))
        assert not _echo(node.port, None)  # plain DICOM is refused
    finally:
        assert node.stop() == 0


def test_world_readable_private_key_is_refused(pki: Path, tmp_path: Path):
    loose = tmp_path / "loose.key"
    loose.write_bytes((pki / "server.key").read_bytes())
    loose.chmod(0o644)
    tls = f'[node.tls]\ncert = "{pki / "server.pem"}"\nkey = "{loose}"\n'
    node = NodeProcess(tmp_path, "", "", node_extra=tls)
    result = node.cli("check-config")
    assert result.returncode == 1
    assert f"node.tls.key: {loose} is readable by every user (mode 644)" in result.stderr
    (tmp_path / "m").mkdir()
    missing = NodeProcess(tmp_path / "m", "", "",
                          node_extra='[node.tls]\ncert = "nope.pem"\nkey = "nope.key"\n')
    assert "node.tls.cert: file nope.pem does not exist" in missing.cli("check-config").stderr


@pytest.mark.slow
def test_destination_over_tls_to_orthanc(pki: Path, tmp_path: Path):
    pacs = Orthanc(tmp_path / "orthanc")
    config = pacs.config.read_text()[:-1] + (
        f', "DicomTlsEnabled": true, "DicomTlsCertificate": "{pki / "server.pem"}", '
        f'"DicomTlsPrivateKey": "{pki / "server.key"}", '
        f'"DicomTlsTrustedCertificates": "{pki / "ca.pem"}", '
        '"DicomTlsRemoteCertificateRequired": true}')
    pacs.config.write_text(config)
    pacs.start()
    try:
        destination = (
            f'[[destinations]]\nname = "pacs"\ntype = "dicom"\nae_title = "ORTHANC"\n'
            f'host = "127.0.0.1"\nport = {pacs.dicom_port}\n'
            f'[destinations.tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / "client.pem"}"\n'
            f'key = "{pki / "client.key"}"\n')
        (tmp_path / "node").mkdir()
        node = NodeProcess(tmp_path / "node", sr_rule(), destination)
        node.start()
        storescu(MR_DIR, node.port)
        wait_for(lambda: node.job_states() == ["done"], 120, "delivery over TLS")
        assert pacs.instance_count() == 35
        node.stop()
    finally:
        pacs.stop()
