"""Enrollment token text form, parsing and key derivation (common/enroll.py)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from common import enroll, errors

ID = "0123456789abcdef" * 2
SECRET = bytes(range(32))
SECRET_TEXT = base64.urlsafe_b64encode(SECRET).decode().rstrip("=")


def test_round_trip_of_a_new_token() -> None:
    token = enroll.new()
    assert len(token.token_id) == 32 and token.token_id == token.token_id.lower()
    assert len(token.secret) == 32
    text = token.text
    assert text.startswith("drlab-enroll-v1." + token.token_id + ".") and len(text.split(".")[2]) == 43
    assert enroll.parse(text) == token
    assert enroll.parse(f"  {text}\n") == token
    assert enroll.new() != token


def test_key_derivation_is_stable_and_documented() -> None:
    token = enroll.EnrollToken(ID, SECRET)
    assert token.key == hashlib.sha256(b"drlab-enroll-v1" + SECRET).digest()
    assert len(token.key) == 32
    assert enroll.parse(f"drlab-enroll-v1.{ID}.{SECRET_TEXT}").key == token.key
    assert enroll.EnrollToken(ID, bytes(32)).key != token.key


def test_repr_and_str_never_show_the_secret() -> None:
    token = enroll.new()
    secret_text = token.text.split(".")[2]
    for shown in (repr(token), str(token), f"{token}", repr([token])):
        assert token.token_id in shown
        assert secret_text not in shown and token.secret.hex() not in shown and str(token.secret) not in shown
        assert token.key.hex() not in shown


@pytest.mark.parametrize("text, message", [
    ("", "must look like"),
    ("drlab-enroll-v2." + ID + "." + SECRET_TEXT, "must look like"),
    ("drlab-enroll-v1." + ID, "must look like"),
    ("drlab-enroll-v1." + ID + "." + SECRET_TEXT + ".x", "must look like"),
    ("drlab-enroll-v1." + ID.upper() + "." + SECRET_TEXT, "id must be 32 lowercase hex"),
    ("drlab-enroll-v1." + ID[:-1] + "." + SECRET_TEXT, "id must be 32 lowercase hex"),
    ("drlab-enroll-v1." + ID + "." + SECRET_TEXT[:-1], "secret must be 43 base64url"),
    ("drlab-enroll-v1." + ID + "." + SECRET_TEXT[:-1] + "+", "secret must be 43 base64url"),
    ("drlab-enroll-v1." + ID + "." + SECRET_TEXT + "=", "secret must be 43 base64url"),
    ("drlab-enroll-v1." + ID + "." + SECRET_TEXT[:-1] + "B", "canonical"),  # non-zero padding bits
])
def test_malformed_text_is_a_clear_bad_request(text: str, message: str) -> None:
    with pytest.raises(errors.BadRequest) as info:
        enroll.parse(text)
    assert message in info.value.message
    assert SECRET_TEXT[:20] not in info.value.message  # never echoes the secret


def test_parse_refuses_what_is_not_text() -> None:
    with pytest.raises(errors.BadRequest):
        enroll.parse(None)  # type: ignore[arg-type]


def test_read_token_file(tmp_path: Path) -> None:
    token = enroll.new()
    path = tmp_path / "token"
    path.write_text(token.text + "\n")
    assert enroll.read_token_file(str(path)) == token
    path.write_text("garbage")
    with pytest.raises(errors.BadRequest):
        enroll.read_token_file(str(path))
