"""common/promexport.py: per-daemon registries collected lazily, the text format parses, and the
family helpers; common/logging.py: every event carries the component of its daemon."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import structlog
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from common import logging as dlog
from common import promexport


def parse(body: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_registry_collects_at_each_scrape_and_the_text_parses() -> None:
    state = {"a": 1.0}
    calls = []

    def families() -> list[object]:
        calls.append(1)
        return [promexport.gauge("drlab_x_bytes", "X.", labels=("disk",), values=promexport.keyed(state)),
                promexport.counter("drlab_y_total", "Y.", 5),
                promexport.gauge("drlab_z", "Z.", 2.5)]

    registry = promexport.new_registry(families)  # type: ignore[arg-type]
    assert calls == []  # nothing collected at registration
    first = parse(promexport.render(registry))
    assert first["drlab_x_bytes"] == {(("disk", "a"),): 1.0}
    assert first["drlab_y_total"] == {(): 5.0} and first["drlab_z"] == {(): 2.5}
    state["b"] = 7
    second = parse(promexport.render(registry))
    assert second["drlab_x_bytes"] == {(("disk", "a"),): 1.0, (("disk", "b"),): 7.0} and len(calls) == 2


def test_two_registries_are_independent_and_the_global_one_is_untouched() -> None:
    before = {m.name for m in REGISTRY.collect()}
    one = promexport.new_registry(lambda: [promexport.gauge("drlab_same", "Same.", 1)])
    two = promexport.new_registry(lambda: [promexport.gauge("drlab_same", "Same.", 2)])
    assert parse(promexport.render(one))["drlab_same"] == {(): 1.0}
    assert parse(promexport.render(two))["drlab_same"] == {(): 2.0}
    assert {m.name for m in REGISTRY.collect()} == before


def test_render_families_and_the_response() -> None:
    body = promexport.render_families([promexport.gauge("drlab_jobs", "Jobs.", labels=("state", "kind"),
                                                        values={("running", "failover"): 3})])
    assert parse(body)["drlab_jobs"] == {(("kind", "failover"), ("state", "running")): 3.0}
    resp = promexport.response(body)
    assert resp.headers["Content-Type"].startswith("text/plain; version=") and resp.body == body


def test_component_of_a_logger_name() -> None:
    assert dlog.component_of("drlab.ps.uploader") == "ps" and dlog.component_of("drlab.mt") == "mt"
    assert dlog.component_of("drlab.http") is None and dlog.component_of("other.ps") is None


def test_every_json_event_carries_its_daemons_component(tmp_path: Path) -> None:
    log_file = tmp_path / "x.log"
    try:
        dlog.setup("cs", log_file, level=logging.DEBUG)
        dlog.get("drlab.mt.worker").info("from_mt", disk="d1", gen=2, seq=3, passphrase="hunter2")
        dlog.get("drlab.http").info("from_common")
        thread = threading.Thread(target=lambda: dlog.get("drlab.http").info("from_thread"))
        thread.start()
        thread.join()
        logging.getLogger("aiohttp.server").error("foreign")
    finally:
        structlog.contextvars.clear_contextvars()
    events = {e["event"]: e for e in map(json.loads, log_file.read_text().splitlines())}
    assert events["from_mt"]["component"] == "mt" and events["from_mt"]["passphrase"] == "***"
    assert (events["from_mt"]["disk"], events["from_mt"]["gen"], events["from_mt"]["seq"]) == ("d1", 2, 3)
    assert events["from_common"]["component"] == "cs"
    assert events["from_thread"]["component"] == "cs"  # no context variables in a thread
    assert events["foreign"]["component"] == "cs"


@pytest.mark.parametrize("name", ["drlab_a_total", "drlab_a"])
def test_counter_names_take_total_once(name: str) -> None:
    assert set(parse(promexport.render_families([promexport.counter(name, "A.", 1)]))) == {"drlab_a_total"}
