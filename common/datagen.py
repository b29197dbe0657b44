"""Workload data, regenerable from (seed, write number, length, profile).

The workload's write log stores no data: the oracle calls :func:`data_for` with the same
arguments and gets the same bytes back. Everything here is deterministic across runs and
processes (``random.Random`` seeded with an int, fixed vocabulary, no hash randomisation).

Profiles:
- ``random``: incompressible bytes.
- ``mixed``: realistic data that lz4 compresses about 2:1. Each 4 KiB page is, chosen
  deterministically, random bytes, text-like bytes (words of a small vocabulary), or zeros.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError

PAGE = 4096
_MASK64 = (1 << 64) - 1
_K_WNUM = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads consecutive wnums over the seed space
_K_SEED = 0xBF58476D1CE4E5B9
_ZERO_PAGE = bytes(PAGE)

_VOCAB = (
    "the of and to in is was for on that with as by at from disk block write read replica "
    "journal batch seq generation agent server process master target recovery point failover "
    "commit undo redo offset length checksum error ok status time ns bytes page data log "
    "user id name value key table row select insert update delete where order group json "
    "http get put post 200 201 404 500 true false null 0 1 2 3 4 5 6 7 8 9 10 42 100 1024"
).split()


def _build_corpus(size: int) -> bytes:
    """A fixed text corpus (identical in every process) that text pages are sliced from."""
    rng = random.Random(0xD41A7E57)
    phrases = [" ".join(rng.choice(_VOCAB) for _ in range(rng.randint(3, 7))) for _ in range(100)]
    parts: list[str] = []
    total = 0
    while total < size:
        end = "\n" if rng.random() < 0.3 else " "
        line = f"{rng.choice(phrases)} {rng.randrange(100000)}{end}"
        parts.append(line)
        total += len(line)
    return "".join(parts).encode()[:size]


_CORPUS_SIZE = 1 << 20
_CORPUS = _build_corpus(_CORPUS_SIZE + PAGE)

PROFILE_IDS = {"random": 1, "mixed": 2}
PROFILE_NAMES = {v: k for k, v in PROFILE_IDS.items()}


@dataclass(frozen=True)
class Profile:
    """A data profile: its name and its page shares (``mixed`` only; the rest are random)."""

    name: str = "mixed"
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def profile_id(self) -> int:
        return PROFILE_IDS[self.name]

    @property
    def zero_share(self) -> float:
        return float(self.params.get("zero_share", 0.0))

    @property
    def text_share(self) -> float:
        return float(self.params.get("text_share", 0.0))

    def params_json(self) -> bytes:
        return json.dumps(self.params, sort_keys=True).encode()


_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "random": {"v": 1},
    "mixed": {"v": 1, "zero_share": 0.20, "text_share": 0.50},
}


def profile(name: str, params: dict[str, Any] | None = None) -> Profile:
    """A named profile with its default parameters (overridden by ``params``)."""
    if name not in PROFILE_IDS:
        raise ConfigError(f"unknown data profile {name!r}; known: {', '.join(PROFILE_IDS)}")
    merged = {**_DEFAULT_PARAMS[name], **(params or {})}
    shares = float(merged.get("zero_share", 0.0)) + float(merged.get("text_share", 0.0))
    if not 0.0 <= shares <= 1.0:
        raise ConfigError(f"profile {name}: zero_share + text_share must be within [0, 1]")
    return Profile(name, merged)


def profile_from_id(profile_id: int, params: dict[str, Any]) -> Profile:
    name = PROFILE_NAMES.get(profile_id)
    if name is None:
        raise ConfigError(f"unknown data profile id {profile_id}")
    return Profile(name, dict(params))


def _rng_for(seed: int, wnum: int) -> random.Random:
    return random.Random(((seed * _K_SEED) ^ (wnum * _K_WNUM)) & _MASK64)


def data_for(seed: int, wnum: int, length: int, prof: Profile | str = "mixed") -> bytes:
    """The bytes of write ``wnum`` of a workload seeded with ``seed``: same inputs, same bytes."""
    if length < 0:
        raise ValueError("length must be >= 0")
    p = profile(prof) if isinstance(prof, str) else prof
    rng = _rng_for(seed, wnum)
    if p.name == "random" or length == 0:
        return rng.randbytes(length)
    return _mixed(rng, length, p.zero_share, p.text_share)


def _mixed(rng: random.Random, length: int, zero_share: float, text_share: float) -> bytes:
    npages = -(-length // PAGE)
    kinds = [rng.random() for _ in range(npages)]
    nrandom = sum(1 for k in kinds if k >= zero_share + text_share)
    pool = memoryview(rng.randbytes(nrandom * PAGE))
    parts: list[bytes | memoryview] = []
    used = 0
    for k in kinds:
        if k < zero_share:
            parts.append(_ZERO_PAGE)
        elif k < zero_share + text_share:
            start = rng.randrange(_CORPUS_SIZE)
            parts.append(_CORPUS[start:start + PAGE])
        else:
            parts.append(pool[used:used + PAGE])
            used += PAGE
    out = b"".join(parts)
    return out if len(out) == length else out[:length]
