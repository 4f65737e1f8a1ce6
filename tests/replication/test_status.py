"""``GET /replicationz``: the mode, and per target the queue, counters, errors and lease,
read from the KV (every worker of the region answers the same); 503 only when the KV does
not answer; lag never fails ``/readyz``. And the holder's periodic state log line."""

from __future__ import annotations

import logging

from tests.replication.conftest import eventually
from tests.upload_support import snapshot_body
from zephyr_edge.domain.assets import asset_hash
from zephyr_edge.errors import BackendUnavailable
from zephyr_edge.http.appkeys import KV_KEY
from zephyr_edge.replication import status
from zephyr_edge.settings.redaction import without_userinfo

TARGET = "http://user:pa55word@eu.invalid:8443/sync"
SHOWN = "http://eu.invalid:8443/sync"


async def get_status(worker) -> dict:
    response = await worker.client.get("/replicationz")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    return await response.json()


async def test_disabled_and_receive_only(backends, start_worker):
    off = await start_worker(backends("a"))
    assert await get_status(off) == {"replica": None, "mode": "disabled", "targets": []}
    receiving = await start_worker(backends("b"), "eu")
    assert await get_status(receiving) == {"replica": "eu", "mode": "receive-only", "targets": []}


async def test_fan_out_while_the_target_is_down_then_back(backends, start_worker, fake_region):
    fake_region.down = True
    region = backends("us")
    us = await start_worker(region, "us", [TARGET], make_client=fake_region.client)
    other = await start_worker(region, "us", [TARGET], make_client=fake_region.client)
    await us.upload_file(b"one", "one.js")
    await us.upload_json("snapshot", snapshot_body(files={"one.js": b"one"}))
    await eventually(lambda: _has_error(us))
    doc = await get_status(us)
    assert doc["replica"] == "us" and doc["mode"] == "fan-out"
    [target] = doc["targets"]
    assert target["url"] == SHOWN and "pa55word" not in str(doc)
    assert target["queue_depth"] == 2 and target["oldest_undelivered_age_s"] >= 0
    assert target["delivered"] == 0 and target["rejected"] == 0
    assert "connection refused" in target["last_error"] and target["last_error_at"].endswith("Z")
    assert target["last_delivered_at"] is None
    owners = {w.senders[0].leases.owner for w in (us, other)}
    assert target["holder"] in owners and 0 < target["lease_expires_in_s"] <= 0.6
    seen_by_other = (await get_status(other))["targets"][0]
    for key in ("url", "queue_depth", "delivered", "last_error", "holder"):  # last_error_at moves on each retry
        assert seen_by_other[key] == target[key]
    assert (await us.client.get("/readyz")).status == 200  # lag never fails readiness

    fake_region.down = False
    await eventually(us.drained)
    target = (await eventually(lambda: _delivered(us, 2)))["targets"][0]
    assert target["queue_depth"] == 0 and target["oldest_undelivered_age_s"] is None
    assert target["last_delivered_at"] >= target["last_error_at"]


async def _has_error(worker):
    return (await get_status(worker))["targets"][0]["last_error"]


async def _delivered(worker, n):
    doc = await get_status(worker)
    return doc if doc["targets"][0]["delivered"] == n else None


async def test_rejected_entries_are_counted(backends, start_worker, fake_region):
    fake_region.refuse.add(asset_hash(b"bad", "bad.js"))
    us = await start_worker(backends("us"), "us", [TARGET], make_client=fake_region.client)
    await us.upload_file(b"bad", "bad.js")
    doc = await eventually(lambda: _rejected(us))  # fields are read one after the other: wait for both
    assert doc["targets"][0]["queue_depth"] == 0 and doc["targets"][0]["delivered"] == 0


async def _rejected(worker):
    doc = await get_status(worker)
    target = doc["targets"][0]
    return doc if target["rejected"] == 1 and target["queue_depth"] == 0 else None


async def test_503_when_the_kv_does_not_answer(backends, start_worker, fake_region, monkeypatch):
    us = await start_worker(backends("us"), "us", [TARGET], make_client=fake_region.client)

    async def unreachable(*args, **kw):
        raise BackendUnavailable("local", "cannot reach it")

    monkeypatch.setattr(us.app[KV_KEY], "smembers", unreachable)
    monkeypatch.setattr(us.app[KV_KEY], "scard", unreachable)
    response = await us.client.get("/replicationz")
    assert response.status == 503
    assert response.headers["Cache-Control"] == "no-store"
    assert "replication status unknown" in (await response.json())["message"]


async def test_the_holder_logs_the_target_state(backends, start_worker, fake_region, caplog):
    fake_region.down = True
    with caplog.at_level(logging.INFO, logger="zephyr_edge.replication"):
        us = await start_worker(backends("us"), "us", [TARGET], make_client=fake_region.client)
        await us.upload_file(b"one", "one.js")
        await eventually(lambda: _state_lines(caplog, with_error=True), what="a state line with the error")
    fields = _state_lines(caplog, with_error=True)[-1]
    assert fields["zephyr.replica.target"] == SHOWN and fields["zephyr.replica.queue_depth"] == 1
    assert {"zephyr.replica.delivered", "zephyr.replica.holder", "zephyr.replica.oldest_undelivered_age_s"} <= set(fields)
    assert "pa55word" not in caplog.text


def _state_lines(caplog, with_error: bool = False) -> list[dict]:
    out = [r.fields for r in caplog.records if r.getMessage() == "Replication target state"]
    return [f for f in out if f.get("zephyr.replica.last_error")] if with_error else out


def test_display_url_and_mode(backends):
    assert without_userinfo(TARGET) == SHOWN
    assert without_userinfo("https://x.example.com") == "https://x.example.com"
    assert without_userinfo("https://u:p@x.example.com/a", mask="***") == "https://***@x.example.com/a"
    assert status.log_fields({"url": SHOWN, "queue_depth": 1}) == {
        "zephyr.replica.target": SHOWN, "zephyr.replica.queue_depth": 1}
