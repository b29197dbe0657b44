import ssl
from pathlib import Path

import pytest
from cryptography import x509

from common import tls


@pytest.fixture
def ca() -> tuple[bytes, bytes]:
    return tls.make_ca()


def test_issued_certificate_carries_id_role_and_address(ca: tuple[bytes, bytes], tmp_path: Path) -> None:
    files = tls.IdentityFiles(tmp_path / "id")
    tls.issue_local(*ca, files, component_id="abc123", role="ps", hosts=["127.0.1.1"], meta={"x": 1})
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "abc123"
    assert cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "ps"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.1.1"]
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.read_meta() == {"x": 1}


def test_csr_subject_is_not_trusted(ca: tuple[bytes, bytes]) -> None:
    key = tls.new_key()
    csr = tls.make_csr(key, "admin", "i-want-to-be-admin")
    pem = tls.issue(*ca, csr, component_id="c1", role="agent", hosts=[])
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "agent"


def test_unknown_role_refused(ca: tuple[bytes, bytes]) -> None:
    csr = tls.make_csr(tls.new_key(), "x", "h")
    with pytest.raises(ValueError):
        tls.issue(*ca, csr, component_id="c1", role="root", hosts=[])


def test_identity_from_peercert() -> None:
    peer = {"subject": ((("organizationName", "drlab"),), (("organizationalUnitName", "mt"),),
                        (("commonName", "ff00"),)), "serialNumber": "1A"}
    ident = tls.identity_from_peercert(peer)
    assert ident == tls.Identity("ff00", "mt", 26)
    assert tls.identity_from_peercert({}) is None
    bad_role = {"subject": ((("organizationalUnitName", "root"),), (("commonName", "x"),))}
    assert tls.identity_from_peercert(bad_role) is None


def test_contexts_require_tls12(ca: tuple[bytes, bytes], tmp_path: Path) -> None:
    files = tls.IdentityFiles(tmp_path / "id")
    tls.issue_local(*ca, files, component_id="s", role="cs", hosts=["127.0.0.1"], meta={})
    server = tls.server_context(files)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    client = tls.client_context(files)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
