"""The serving choice (variant, 304, Range in force) as a pure function: no HTTP, no I/O."""

from __future__ import annotations

import pytest

from zephyr_edge.domain.snapshot import Asset
from zephyr_edge.http.serving.choice import Choice, choose
from zephyr_edge.http.serving.compression import GZIP, Negotiator
from zephyr_edge.http.serving.variants import MIN_COMPRESS_BYTES, Route

HASH = "a" * 64
BIG = MIN_COMPRESS_BYTES * 4


def route(extname: str = ".js", size: int = BIG, *, stream: bool = False) -> Route:
    asset = Asset(path=f"assets/app{extname}", extname=extname, hash=HASH, size=size)
    return Route(asset, True, (GZIP,), 1 if stream else BIG * 10)


def pick(r: Route, worth=lambda key: True, **headers: str | None) -> Choice:
    given = {"accept_encoding": None, "range_header": None, "if_range": None, "if_none_match": None}
    given.update(headers)
    return choose(r, negotiator=Negotiator((GZIP,)), worth_encoding=worth, **given)


def test_identity_without_accept_encoding():
    r = route()
    assert pick(r) == Choice(r.identity, None, False)


def test_gzip_when_accepted_and_encodable():
    r = route()
    choice = pick(r, accept_encoding="gzip, br")
    assert choice.variant.codec is GZIP and choice.variant is not r.identity
    assert choice.range is None and not choice.not_modified


@pytest.mark.parametrize("r", [route(".png"), route(".js", size=MIN_COMPRESS_BYTES - 1)],
                         ids=["not-compressible-type", "too-small"])
def test_identity_for_what_is_not_encodable(r):
    assert pick(r, accept_encoding="gzip").variant is r.identity


def test_a_codec_refused_by_the_client_is_not_chosen():
    r = route()
    assert pick(r, accept_encoding="gzip;q=0, identity").variant is r.identity


def test_a_variant_that_does_not_pay_falls_back_to_identity():
    r = route()
    seen = []
    choice = pick(r, worth=lambda key: seen.append(key) or False, accept_encoding="gzip")
    assert choice.variant is r.identity and seen == [r.variant(GZIP).cache_key]


def test_a_range_keeps_identity_and_stays_in_force():
    r = route()
    choice = pick(r, accept_encoding="gzip", range_header="bytes=0-9")
    assert choice == Choice(r.identity, "bytes=0-9", False)


def test_if_range_with_the_current_etag_keeps_the_range():
    r = route()
    assert pick(r, range_header="bytes=0-9", if_range=f" {r.identity.etag} ").range == "bytes=0-9"


def test_if_range_with_another_etag_drops_the_range_and_allows_coding():
    r = route()
    choice = pick(r, accept_encoding="gzip", range_header="bytes=0-9", if_range='"outdated"')
    assert choice.range is None and choice.variant.codec is GZIP


def test_if_range_without_range_changes_nothing():
    r = route()
    assert pick(r, if_range='"outdated"') == Choice(r.identity, None, False)


@pytest.mark.parametrize("accept", [None, "gzip"])
def test_if_none_match_of_the_chosen_variant_is_304(accept):
    r = route()
    chosen = pick(r, accept_encoding=accept).variant
    assert pick(r, accept_encoding=accept, if_none_match=chosen.etag).not_modified
    assert pick(r, accept_encoding=accept, if_none_match=f'"x", {chosen.etag}').not_modified
    assert pick(r, accept_encoding=accept, if_none_match="*").not_modified


def test_if_none_match_of_another_variant_is_not_304():
    r = route()
    coded = r.variant(GZIP)
    assert coded.etag != r.identity.etag
    assert not pick(r, if_none_match=coded.etag).not_modified
    assert not pick(r, accept_encoding="gzip", if_none_match=r.identity.etag).not_modified


def test_a_streamed_asset_gets_its_weak_streaming_variant():
    r = route(stream=True)
    assert r.stream
    choice = pick(r, accept_encoding="gzip")
    assert choice.variant.codec is GZIP and choice.variant.etag.startswith("W/")
