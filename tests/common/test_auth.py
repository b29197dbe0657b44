from common import auth


def test_passphrase_never_shows_in_repr_or_str() -> None:
    p = auth.new_passphrase()
    assert p.value not in repr(p)
    assert p.value not in str(p)
    assert p.value not in f"{p}"


def test_client_proof_binds_every_input() -> None:
    key = auth.derive_key(auth.Passphrase("correct horse"), b"salt" * 4)
    base = dict(server_nonce=b"s" * 32, client_nonce=b"c" * 32, role="ps", host_id="h1", csr_pem=b"csr")
    proof = auth.client_proof(key, **base)  # type: ignore[arg-type]
    for field, value in [("server_nonce", b"x" * 32), ("client_nonce", b"x" * 32), ("role", "mt"),
                         ("host_id", "h2"), ("csr_pem", b"other")]:
        changed = dict(base, **{field: value})
        assert not auth.equal(proof, auth.client_proof(key, **changed))  # type: ignore[arg-type]
    wrong = auth.derive_key(auth.Passphrase("wrong"), b"salt" * 4)
    assert not auth.equal(proof, auth.client_proof(wrong, **base))  # type: ignore[arg-type]


def test_server_proof_binds_ca_and_certificate() -> None:
    key = auth.derive_key(auth.Passphrase("p"), b"s" * 16)
    base = dict(server_nonce=b"s", client_nonce=b"c", role="agent", host_id="m1", ca_der=b"ca", cert_der=b"cert")
    proof = auth.server_proof(key, **base)  # type: ignore[arg-type]
    assert not auth.equal(proof, auth.server_proof(key, **dict(base, ca_der=b"evil")))  # type: ignore[arg-type]
    assert not auth.equal(proof, auth.server_proof(key, **dict(base, cert_der=b"evil")))  # type: ignore[arg-type]
