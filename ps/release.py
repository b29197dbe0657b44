"""Whether the PS may release (delete) the cached batches of a disk it no longer serves (pure).

Rule: a DR product never deletes a batch that may still be needed. The cache of a disk is
released only when all of these hold:

- the PS has applied its FIRST settings document since it started (before that, every disk
  merely looks unserved);
- the disk is neither served nor drained by this PS in those settings (a served or draining
  disk's batches are the uploader's: deleted one by one on the MT's receipt);
- and someone with authority said the batches cannot be taken any more:
  - the MT refused the oldest cached batch as *fenced* (403: this PS is no longer the disk's
    sender, and not draining it) or *not held* (404 ``not_found`` "... is not held by this master
    target", answered only once the MT applied its settings: the disk's protection was disabled
    or the disk excluded, the MT released it; docs/PROTOCOL.md "Releasing a disk"), or
  - the MT refused it as an *old generation* (409 ``stale_generation``) and no cached batch is
    of a newer generation than the refused one, or
  - the disk's current generation, as the CS or MT report it, is newer than every cached batch
    (the disk moved on: a PS switch with a dead PS, or a regeneration).

Anything else keeps the files: the MT unreachable, a retriable or unknown answer, no MT known
for the disk, any other 404 (a URL that is no MT's batch route). A kept disk is checked again
later.
"""

from __future__ import annotations

from dataclasses import dataclass

FENCED = "fenced"
NOT_HELD = "not_held"
STALE_GENERATION = "stale_generation"
NEWER_GENERATION = "newer_generation"
REFUSALS = (FENCED, NOT_HELD, STALE_GENERATION)
NOT_HELD_TEXT = "not held by this master target"  # mt/ingest.py disk_for's 404

# reasons to keep
SETTINGS_NOT_APPLIED = "settings_not_applied"
SERVED = "served"
DRAINING = "draining"
UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class Refusal:
    """How the MT answered a probe of the oldest cached batch: ``kind`` one of REFUSALS, ``gen``
    the probed batch's generation."""

    kind: str
    gen: int


@dataclass(frozen=True)
class Decision:
    release: bool
    reason: str


def decide(disk_id: str, *, settings_applied: bool, served: frozenset[str] | set[str],
           drained: frozenset[str] | set[str], newest_cached_gen: int, refusal: Refusal | None = None,
           current_gen: int | None = None) -> Decision:
    """Release or keep the cache of ``disk_id`` (the module's rule). ``newest_cached_gen``: the
    highest generation among its cached batches; ``current_gen``: the disk's generation as the
    CS or MT report it, None when unknown."""
    if not settings_applied:
        return Decision(False, SETTINGS_NOT_APPLIED)
    if disk_id in drained:
        return Decision(False, DRAINING)
    if disk_id in served:
        return Decision(False, SERVED)
    if refusal is not None and refusal.kind in (FENCED, NOT_HELD):
        return Decision(True, refusal.kind)
    if refusal is not None and refusal.kind == STALE_GENERATION and newest_cached_gen <= refusal.gen:
        return Decision(True, STALE_GENERATION)
    if current_gen is not None and current_gen > newest_cached_gen:
        return Decision(True, NEWER_GENERATION)
    return Decision(False, UNCONFIRMED)


def refusal_kind(status: int, code: str, message: str = "") -> str | None:
    """The release-relevant kind of an MT answer to a batch PUT (mt/ingest.py's order of checks:
    404 the disk not held, 403 not served by the caller, 409 ``stale_generation``); None for any
    other."""
    if status == 403:
        return FENCED
    if status == 404 and code == "not_found" and NOT_HELD_TEXT in message:
        return NOT_HELD
    if status == 409 and code == STALE_GENERATION:
        return STALE_GENERATION
    return None
