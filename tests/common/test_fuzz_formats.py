"""Fuzz of the format-version checks (common/formats.py) every stored JSON document and binary
header goes through: any JSON value gives a version in 1..supported or the caller's error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import formats
from tests.fuzzing import fuzz, fuzz_seed  # noqa: F401

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("fuzz_seed")]

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                                    max_size=3), max_leaves=8)


class Refused(Exception):
    pass


@fuzz(200)
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["format", "version"]), json_values)),
       st.integers(1, 5))
def test_any_document_gives_a_version_or_the_callers_error(doc: object, supported: int) -> None:
    for key in ("format", "version"):
        try:
            version = formats.of_doc("fuzzed document", doc, supported, key=key, error=Refused)
        except Refused as exc:
            assert "fuzzed document" in str(exc)
            continue
        assert isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= supported
        assert isinstance(doc, dict) and doc.get(key, 1) == version
