"""Models of access to the CS: who may talk to it or act on it, and the record of what they did —
registration challenges and agent enrollment tokens (cs/registration.py, cs/enrollment.py), the
certificates the CS issued (cs/revocation.py), dashboard operators and their sessions
(cs/operators.py), push-install accounts (cs/accounts.py) and the audit log (cs/audit.py).
Imported at the end of cs/db/models.py, so metadata and migrations see them; secrets are stored
sealed or hashed, and no ``__repr__`` shows one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cs.db.models import SERIAL64, Base


class Challenge(Base):
    __tablename__ = "challenges"
    challenge_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    server_nonce: Mapped[str] = mapped_column(String(64))  # b64
    role: Mapped[str] = mapped_column(String(16))
    host_id: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[int] = mapped_column(BigInteger)  # ns
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    enroll_token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # cs/enrollment.py

    def __repr__(self) -> str:
        return f"Challenge({self.challenge_id}, {self.role}, {self.host_id}, used={self.used})"


class EnrollmentToken(Base):
    """A single-use agent enrollment token (cs/enrollment.py); the key is sealed, never in clear."""

    __tablename__ = "enrollment_tokens"
    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host_id: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="agent")
    key_enc: Mapped[str] = mapped_column(String(255))  # accounts.StoreKey.seal(token_id, b64(key))
    expires_at: Mapped[int] = mapped_column(BigInteger)  # ns
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:  # never the key
        return f"EnrollmentToken({self.token_id}, {self.role}, {self.host_id}, used={self.used})"


class Operator(Base):
    """A dashboard login (cs/operators.py): role ``admin`` or ``reader`` (read-only), its password as
    scrypt(password, salt) with the salt and the scrypt parameters kept beside it."""

    __tablename__ = "operators"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    pw_hash_b64: Mapped[str] = mapped_column(String(128))
    pw_salt_b64: Mapped[str] = mapped_column(String(64))
    pw_kdf: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"alg": "scrypt", "n", "r", "p", "dklen"}
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)

    def __repr__(self) -> str:  # never the hash or the salt
        return f"Operator({self.name}, {self.role}, disabled={self.disabled})"


class OperatorSession(Base):
    """A login session: only the SHA-256 of its random token is kept, with its expiry."""

    __tablename__ = "operator_sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator: Mapped[str] = mapped_column(String(64), index=True)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    expires_ns: Mapped[int] = mapped_column(BigInteger, index=True)

    def __repr__(self) -> str:
        return f"OperatorSession({self.operator}, expires_ns={self.expires_ns})"


class Certificate(Base):
    """Every certificate the CS issued to a component (cs/revocation.py): the passphrase epoch it
    was issued under (an older epoch than the current one means "re-register") and its revocation."""

    __tablename__ = "certificates"
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex
    component_id: Mapped[str] = mapped_column(String(32), index=True)
    issued_ns: Mapped[int] = mapped_column(BigInteger)
    expires_ns: Mapped[int] = mapped_column(BigInteger, index=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    revoked_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    def __repr__(self) -> str:
        return f"Certificate({self.serial}, {self.component_id}, epoch={self.epoch}, revoked={self.revoked_ns})"


class Account(Base):
    """Push-install credentials (cs/accounts.py): the password only AES-GCM-encrypted."""

    __tablename__ = "accounts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    password_enc: Mapped[str] = mapped_column(Text)  # b64(nonce | ciphertext+tag), bound to the name
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:  # never the password
        return f"Account({self.name}, {self.username})"


class AuditEvent(Base):
    """One state change (cs/audit.py): who, what, old and new values (secrets redacted); written by
    a session hook in the transaction of the change."""

    __tablename__ = "audit_log"
    audit_id: Mapped[int] = mapped_column(SERIAL64, primary_key=True, autoincrement=True)
    at_ns: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    entity: Mapped[str] = mapped_column(String(64), index=True)
    entity_id: Mapped[str] = mapped_column(String(255), index=True)
    action: Mapped[str] = mapped_column(String(16))  # create | update | delete
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {column: [old, new]}

    def __repr__(self) -> str:
        return f"AuditEvent({self.audit_id}, {self.entity}/{self.entity_id}, {self.action}, by {self.actor})"
