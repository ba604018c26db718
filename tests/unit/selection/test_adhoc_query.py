"""An ad-hoc request's parameters and key (rules H2, H3): "also include in digests" is part
of both, and the default keeps the key a request had before the option existed."""

from __future__ import annotations

from datetime import UTC, datetime

from digest.selection import AdhocQuery

REQUEST = dict(themes=("Policing",), published_from=datetime(2025, 10, 1, tzinfo=UTC),
               item_ids=(3,), frequencies=("weekly",))


def test_the_default_request_keeps_the_key_it_had_before_also_in_digests():
    # The key the same request got before the option existed (commit 0afebc7).
    assert AdhocQuery(**REQUEST).key() == "6e5fb8e1305ea55b"


def test_also_in_digests_is_another_request_and_reads_back_from_the_runs_params():
    plain, also = AdhocQuery(**REQUEST), AdhocQuery(**REQUEST, also_in_digests=True)
    assert plain.key() != also.key()
    assert also.as_params()["also_in_digests"] is True
    assert AdhocQuery.from_params(also.as_params()) == also
    assert AdhocQuery.from_params(plain.as_params()) == plain
    # A dry run planned before the option existed has no such parameter: the default.
    legacy = {k: v for k, v in plain.as_params().items() if k != "also_in_digests"}
    assert AdhocQuery.from_params(legacy).also_in_digests is False


def test_the_same_choice_in_another_order_is_the_same_request():
    assert (AdhocQuery(item_ids=(3, 1, 2), themes=("B", "A")).key()
            == AdhocQuery(item_ids=(1, 2, 3, 3), themes=("A", "B")).key())
