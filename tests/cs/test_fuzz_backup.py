"""Fuzz of the CS backup archive reader (cs/backup_archive.py ``open_sealed``): a damaged or hostile
archive (header JSON, scrypt parameters scrypt cannot use, chunk lengths, truncation) is refused
with BadRequest / Unauthorized (4xx), never another exception, before anything is restored."""

from __future__ import annotations

import base64
import io
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import errors
from cs import backup_archive
from tests.fuzzing import fuzz, fuzz_seed, mutated  # noqa: F401

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("fuzz_seed")]

PASSWORD = backup_archive.Password(b"correct horse battery staple")
CHEAP = {"n": 4, "r": 1, "p": 1}  # cheap scrypt: the fuzz is about parsing


def archive(plain: bytes) -> bytes:
    out = io.BytesIO()
    backup_archive.seal(plain, PASSWORD, out, kdf=CHEAP)
    return out.getvalue()


def refused_or_opened(raw: bytes) -> bytes | None:
    try:
        return backup_archive.open_sealed(io.BytesIO(raw), PASSWORD)
    except (errors.BadRequest, errors.Unauthorized) as exc:
        assert 400 <= exc.status < 500
        return None


weird: st.SearchStrategy[object] = st.one_of(
    st.sampled_from([-5, 0, 1, 3, 6, 2**20, 2**31, 2**64, 2**200, 1.5, "8", None, [], {}, True]),
    st.integers(-10, 1 << 11))


@fuzz(250)
@given(st.fixed_dictionaries({"n": weird, "r": weird, "p": weird}),
       st.one_of(st.just(base64.b64encode(b"s" * 16).decode()), st.text(max_size=12), st.integers()),
       st.one_of(st.just(base64.b64encode(b"p" * 8).decode()), st.text(max_size=12)),
       st.one_of(st.just(backup_archive.FORMAT), st.integers(), st.none()), st.binary(max_size=64))
def test_hostile_header(kdf: dict[str, object], salt: object, prefix: object, fmt: object, tail: bytes) -> None:
    for key in ("r", "p"):  # keep the scrypt work small when the parameters are usable
        value = kdf[key]
        if isinstance(value, int) and not isinstance(value, bool) and value > 2:
            kdf[key] = 2
    header = json.dumps({"format": fmt, "kdf": {**kdf, "salt": salt}, "nonce_prefix": prefix}).encode()
    raw = backup_archive.MAGIC + struct.pack(">I", len(header)) + header + tail
    assert refused_or_opened(raw) is None


@fuzz(250)
@given(st.binary(max_size=3000).map(archive).flatmap(mutated))
def test_mutated_archive(raw: bytes) -> None:
    refused_or_opened(raw)


@pytest.mark.parametrize("header", [b"[" * 3000, b'{"kdf": ' * 1500, b"\xff" * 10])
def test_a_deeply_nested_or_binary_header_is_refused(header: bytes) -> None:
    with pytest.raises(errors.BadRequest, match="header is damaged"):
        backup_archive.open_sealed(io.BytesIO(backup_archive.MAGIC + struct.pack(">I", len(header)) + header), PASSWORD)


@pytest.mark.parametrize("kdf", [{"n": -5, "r": 8, "p": 1}, {"n": 3, "r": 8, "p": 1}, {"n": 2**20, "r": 32, "p": 16},
                                 {"n": 2, "r": 0, "p": 0}])
def test_scrypt_parameters_it_cannot_use_are_refused(kdf: dict[str, int]) -> None:
    header = json.dumps({"format": backup_archive.FORMAT, "kdf": {**kdf, "salt": "c2FsdA=="},
                         "nonce_prefix": base64.b64encode(b"p" * 8).decode()}).encode()
    with pytest.raises(errors.BadRequest, match="header is damaged"):
        backup_archive.open_sealed(io.BytesIO(backup_archive.MAGIC + struct.pack(">I", len(header)) + header), PASSWORD)
