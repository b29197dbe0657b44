"""Replication policies: pure validation, the default policy, protect under a policy, CRUD, in-use rules."""

from __future__ import annotations

from typing import Any

import pytest
from cshelpers import Site, raw, settings

from common import errors
from cs import policies


def test_parse_fills_defaults_and_checks_fields_and_relations() -> None:
    assert policies.parse({"name": "p"}) == policies.DEFAULTS
    values = policies.parse({"name": "p", "rpo_threshold_s": 300, "retention_window_s": 7200,
                             "app_consistent_interval_s": 0, "crash_consistent_interval_s": 60,
                             "multi_machine_consistency": True})
    assert values == {"rpo_threshold_s": 300, "retention_window_s": 7200, "app_consistent_interval_s": 0,
                      "crash_consistent_interval_s": 60, "multi_machine_consistency": True,
                      "low_space_action": "prune"}
    assert policies.parse({"name": "p", "rpo_threshold_s": 1})["rpo_threshold_s"] == 1  # seconds: sub-second RPO
    bad: list[dict[str, Any]] = [
           {"rpo_threshold_s": 0}, {"rpo_threshold_s": -1}, {"rpo_threshold_s": 7 * 86400 + 1},
           {"rpo_threshold_s": 1.5}, {"rpo_threshold_s": True}, {"retention_window_s": 16 * 86400},
           {"app_consistent_interval_s": 30}, {"app_consistent_interval_s": 13 * 3600},
           {"multi_machine_consistency": 1}, {"colour": "red"}, {"low_space_action": "panic"},
           {"low_space_action": None},
           {"retention_window_s": 3600, "app_consistent_interval_s": 7200},  # points outside the window
           {"retention_window_s": 600, "crash_consistent_interval_s": 900, "app_consistent_interval_s": 0}]
    for body in bad:
        with pytest.raises(errors.BadRequest):
            policies.parse({"name": "p", **body})


def test_an_update_changes_only_given_fields_and_checks_the_whole() -> None:
    current = dict(policies.DEFAULTS)
    assert policies.parse({"rpo_threshold_s": 120}, current) == {**current, "rpo_threshold_s": 120}
    with pytest.raises(errors.BadRequest):
        policies.parse({"retention_window_s": 3600}, current)  # the 4 h app-consistent interval no longer fits
    with pytest.raises(errors.BadRequest):
        policies.parse({"name": "x"}, current)


async def test_policies_crud_default_and_protect(site: Site) -> None:
    env = site.env
    api = env.admin._api
    [default] = (await api.get("/v1/policies"))["items"]
    assert default["name"] == "default" and default["rpo_threshold_s"] == 3600 and default["machines"] == 0
    gold = await api.post("/v1/policies", {"name": "gold", "rpo_threshold_s": 300, "multi_machine_consistency": True})
    assert gold["retention_window_s"] == 86400 and gold["multi_machine_consistency"] is True

    await site.ps()
    await site.mt()
    m1, _ = await site.agent("m1")
    m2, _ = await site.agent("m2")
    await env.admin.protect(m1.component_id)  # no policy named: the default one
    await api.post(f"/v1/machines/{m2.component_id}/protect", {"policy": "gold"})
    machines = {m["machine_id"]: m for m in (await api.get("/v1/machines"))["items"]}
    assert machines[m1.component_id]["policy"] == "default" and machines[m2.component_id]["policy"] == "gold"
    assert machines[m2.component_id]["protection_state"] == "enabling"
    assert [m["machine_id"] for m in (await api.get("/v1/machines", params={"policy": "gold"}))["items"]] == [
        m2.component_id]

    status, body = await raw(env.url, api._ssl, "POST", f"/v1/machines/{m1.component_id}/protect", {"policy": "nope"})
    assert (status, body["code"]) == (404, "not_found")
    changed = await api.request("PATCH", "/v1/policies/gold", json_body={"rpo_threshold_s": 600})
    assert changed[1]["rpo_threshold_s"] == 600 and changed[1]["machines"] == 1
    for method, path, body, code in (
            ("PATCH", "/v1/policies/gold", {"retention_window_s": 30}, 400),
            ("PATCH", "/v1/policies/gold", {"rpo_threshold_s": 0}, 400),
            ("PATCH", "/v1/policies/gold", {"rpo_threshold_s": -1}, 400),
            ("POST", "/v1/policies", {"name": "tiny", "rpo_threshold_s": 0}, 400),
            ("POST", "/v1/policies", {"name": "gold"}, 409),
            ("DELETE", "/v1/policies/gold", None, 409),  # in use
            ("DELETE", "/v1/policies/default", None, 409),
            ("GET", "/v1/policies/none", None, 404),
            ("GET", "/v1/policies/Bad!", None, 400)):
        status, reply = await raw(env.url, api._ssl, method, path, body)
        assert status == code, (method, path, reply)
        if code == 400:
            assert reply["code"] == "bad_request" and reply["message"], reply  # a clear JSON error
    assert (await api.get("/v1/policies/gold"))["rpo_threshold_s"] == 600  # the refused changes changed nothing
    assert "tiny" not in [p["name"] for p in (await api.get("/v1/policies"))["items"]]
    tight = await api.request("PATCH", "/v1/policies/gold", json_body={"rpo_threshold_s": 1})
    assert tight[1]["rpo_threshold_s"] == 1  # a threshold of seconds: drlab aims at sub-second RPO

    moved = await api.post("/v1/policies/default/assign", {"machines": [m2.component_id]})
    assert moved["machines"] == 2
    await api.request("DELETE", "/v1/policies/gold")
    assert [p["name"] for p in (await api.get("/v1/policies"))["items"]] == ["default"]


async def test_replication_groups_go_under_a_policy(site: Site) -> None:
    api = site.env.admin._api
    a, _ = await site.agent("m1")
    b, _ = await site.agent("m2")
    await api.put("/v1/groups/web", {"machines": [a.component_id, b.component_id]})
    await api.post("/v1/policies", {"name": "mmc", "multi_machine_consistency": True})
    assert (await api.post("/v1/policies/mmc/assign", {"groups": ["web"]}))["groups"] == 1
    status, body = await raw(site.env.url, api._ssl, "POST", "/v1/policies/mmc/assign", {"groups": ["nope"]})
    assert (status, body["code"]) == (404, "not_found")
    status, body = await raw(site.env.url, api._ssl, "DELETE", "/v1/policies/mmc")
    assert (status, body["code"]) == (409, "conflict")


async def test_low_space_action_is_validated_and_reaches_the_mt_with_the_window(site: Site) -> None:
    """The MT's settings carry each disk's retention from its machine's policy (mt/retention.py)."""
    assert policies.parse({"low_space_action": "pause"}, dict(policies.DEFAULTS))["low_space_action"] == "pause"
    api = site.env.admin._api
    gold = await api.post("/v1/policies", {"name": "gold", "retention_window_s": 14_400, "low_space_action": "pause"})
    assert gold["low_space_action"] == "pause"
    assert (await api.get("/v1/policies/default"))["low_space_action"] == "prune"
    status, reply = await raw(site.env.url, api._ssl, "PATCH", "/v1/policies/gold", {"low_space_action": "panic"})
    assert (status, reply["code"]) == (400, "bad_request") and "low_space_action" in reply["message"]
    assert (await api.get("/v1/policies/gold"))["low_space_action"] == "pause"  # unchanged

    await site.ps()
    mt = await site.mt()
    m1, _ = await site.agent("m1")
    await api.post(f"/v1/machines/{m1.component_id}/protect", {"policy": "gold"})
    [disk] = (await settings(mt))["document"]["disks"]
    assert (disk["retention_window_s"], disk["low_space_action"]) == (14_400, "pause")
    await api.request("PATCH", "/v1/policies/gold", json_body={"low_space_action": "prune"})
    [disk] = (await settings(mt))["document"]["disks"]
    assert (disk["retention_window_s"], disk["low_space_action"]) == (14_400, "prune")
