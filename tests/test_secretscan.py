"""The secret scanner (tests/secretscan.py) finds every form of a secret, and nothing else."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from common import tls
from tests import secretscan as ss

pytestmark = pytest.mark.timeout(30)

KEY = bytes(range(200, 232))
PHRASE = "correct-horse-battery-staple"


@pytest.mark.parametrize("encode", [
    lambda k: k, lambda k: k.hex().encode(), lambda k: k.hex().upper().encode(), base64.b64encode,
    base64.urlsafe_b64encode, lambda k: base64.urlsafe_b64encode(k).rstrip(b"="),
])
def test_every_form_of_a_key_is_found(encode: object) -> None:
    blob = b"noise " + encode(KEY) + b" noise"  # type: ignore[operator]
    hits = ss.scan_bytes(blob, "blob", [ss.of_key("disk key", KEY)])
    assert hits and hits[0].secret == "disk key" and hits[0].where == "blob"


def test_text_secret_is_found_in_clear_and_encoded() -> None:
    secret = ss.of_text("passphrase", PHRASE)
    for text in (f'{{"event": "x", "value": "{PHRASE}"}}', base64.b64encode(PHRASE.encode()).decode(),
                 PHRASE.encode().hex()):
        assert ss.scan_text(text, "log", [secret]), text
    assert not ss.scan_text("correct-horse-battery-***", "log", [secret])
    assert PHRASE not in repr(secret)


def test_short_forms_are_refused() -> None:
    with pytest.raises(ValueError):
        ss.of_text("pin", "1234")


def test_pem_private_keys_are_found_by_body_not_header(tmp_path: Path) -> None:
    key_pem = tls.key_pem(tls.new_key())
    (tmp_path / "identity").mkdir()
    (tmp_path / "identity" / "key.pem").write_bytes(key_pem)
    (tmp_path / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    [secret] = ss.pem_keys(tmp_path)
    assert "identity/key.pem" in secret.name
    # one body line leaked inside a JSON log line (newlines escaped): found
    line = key_pem.splitlines()[3].decode()
    log = tmp_path / "x.log"
    log.write_text(json.dumps({"event": "oops", "pem": key_pem.decode()}) + "\n")
    hits = ss.scan_files([log, tmp_path / "missing.log"], [secret])
    assert any(h.form == "pem-line" for h in hits)
    assert ss.scan_text(f"... {line} ...", "answer", [secret])
    assert not ss.scan_text("-----BEGIN PRIVATE KEY----- only the header", "answer", [secret])
    der = base64.b64decode(b"".join(ss.pem_blocks(key_pem)[0][1]))
    assert ss.scan_bytes(b"\x00" + der + b"\x00", "db", [secret])


def test_files_under_lists_files_only(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.log").write_text("x")
    assert ss.files_under(tmp_path) == [tmp_path / "a" / "b" / "f.log"]
