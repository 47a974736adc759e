"""The cluster's pure cores: on-demand forwarding, the queue-report baseline, scenario groups."""

from __future__ import annotations

import pytest

from pdlink.cloud.cluster.forwarding import (
    DECODE, PREFILL, GiveUp, Offer, OnDemandRouter, Pools, QueueReportRouter, Wait,
)
from pdlink.cloud.cluster.groups import (
    DEFAULT_GROUP, GroupRule, RequestFeatures, classify, group_names, prefix_hash,
)


def pools(*groups: str, prefill: int = 3, decode: int = 2) -> Pools:
    return Pools([(f"{g}-p{i}", g, PREFILL) for g in groups for i in range(prefill)]
                 + [(f"{g}-d{i}", g, DECODE) for g in groups for i in range(decode)])


def test_a_busy_instance_rejects_and_the_next_accepts():
    p = pools("a")
    offering = OnDemandRouter(p, budget_s=1.0).offering("a", now=0.0)
    first = offering.next(0.0)
    assert first == Offer("a-p0")
    offering.rejected("a-p0")  # busy: the gateway offers the next at once, no wait
    second = offering.next(0.001)
    assert second == Offer("a-p1")
    offering.accepted("a-p1")
    assert p.by_name["a-p1"].open == 1 and p.by_name["a-p0"].open == 0


def test_candidates_are_ranked_by_open_requests():
    p = pools("a")
    p.opened("a-p0"), p.opened("a-p0"), p.opened("a-p1")
    assert OnDemandRouter(p, 1.0).offering("a", 0.0).next(0.0) == Offer("a-p2")
    p.closed("a-p0"), p.closed("a-p0")
    assert OnDemandRouter(p, 1.0).offering("a", 0.0).next(0.0) == Offer("a-p0")


def test_when_all_are_busy_it_waits_then_offers_again_until_the_budget_is_spent():
    p = pools("a", prefill=2)
    offering = OnDemandRouter(p, budget_s=0.1, retry_s=0.03).offering("a", now=10.0)
    seen, now = [], 10.0
    while True:
        d = offering.next(now)
        seen.append(d)
        if isinstance(d, GiveUp):
            break
        if isinstance(d, Wait):
            now += d.seconds
        else:
            offering.rejected(d.instance)
    assert seen[:3] == [Offer("a-p0"), Offer("a-p1"), Wait(0.03)]
    assert isinstance(seen[-1], GiveUp) and "TTFT budget" in seen[-1].message
    assert now == pytest.approx(10.1)  # the last wait is cut to what is left of the budget
    assert offering.offers == offering.rejections == sum(isinstance(d, Offer) for d in seen)


def test_dead_instances_get_no_offers_and_none_left_gives_up_at_once():
    p = pools("a", prefill=2)
    offering = OnDemandRouter(p, 5.0).offering("a", 0.0)
    assert offering.next(0.0) == Offer("a-p0")
    offering.died("a-p0")
    assert offering.next(0.0) == Offer("a-p1")
    offering.died("a-p1")
    give_up = offering.next(0.0)
    assert isinstance(give_up, GiveUp) and "no live prefill instance" in give_up.message


def test_groups_have_their_own_pools():
    p = pools("chat", "code")
    d = OnDemandRouter(p, 1.0).offering("code", 0.0).next(0.0)
    assert d == Offer("code-p0")
    assert p.least_loaded("chat", DECODE) == "chat-d0"
    p.opened("chat-d0")
    assert p.least_loaded("chat", DECODE) == "chat-d1"
    assert p.least_loaded("chat", DECODE, exclude=["chat-d1"]) == "chat-d0"
    assert isinstance(OnDemandRouter(p, 1.0).offering("other", 0.0).next(0.0), GiveUp)


def test_queue_report_router_follows_stale_reports_without_retrying():
    p = pools("a", prefill=2)
    router = QueueReportRouter(p)
    p.report("a-p0", 5, at_s=0.0)
    p.report("a-p1", 1, at_s=0.0)
    # every request until the next report goes to the same "shortest" queue
    for _ in range(4):
        offering = router.offering("a", 0.05)
        assert offering.next(0.05) == Offer("a-p1")
        offering.accepted("a-p1")
    offering = router.offering("a", 0.06)
    assert offering.next(0.06) == Offer("a-p1")
    offering.rejected("a-p1")  # its queue is full: the one other instance, then nothing
    assert offering.next(0.06) == Offer("a-p0")
    offering.rejected("a-p0")
    assert isinstance(offering.next(0.06), GiveUp)


def test_pools_refuse_bad_layouts():
    with pytest.raises(ValueError, match="role"):
        Pools([("x", "a", "both")])
    with pytest.raises(ValueError, match="twice"):
        Pools([("x", "a", PREFILL), ("x", "a", DECODE)])
    with pytest.raises(ValueError, match="> 0"):
        OnDemandRouter(pools("a"), budget_s=0)


def test_group_rules_classify_by_app_prefix_and_length():
    ids = list(range(100, 200))
    digest = prefix_hash(ids)
    rules = [GroupRule.parse("assistant:app=mail-app"), GroupRule.parse(f"sys:prefix={digest[:8]}"),
             GroupRule.parse("long:min_tokens=1000"), GroupRule.parse("short:max_tokens=64")]
    assert classify(rules, RequestFeatures("mail-app", digest, 5000)) == "assistant"  # first match wins
    assert classify(rules, RequestFeatures("x", digest, 5000)) == "sys"
    assert classify(rules, RequestFeatures("x", prefix_hash([1, 2]), 5000)) == "long"
    assert classify(rules, RequestFeatures("x", prefix_hash([1, 2]), 10)) == "short"
    assert classify(rules, RequestFeatures("x", prefix_hash([1, 2]), 500)) == DEFAULT_GROUP
    assert group_names(rules) == [DEFAULT_GROUP, "assistant", "sys", "long", "short"]
    assert prefix_hash(ids) == prefix_hash(ids + [7])  # only the first 32 tokens count
    assert prefix_hash(ids) != prefix_hash([0] + ids)


@pytest.mark.parametrize("text, word", [
    ("x:colour=red", "not app="), ("x:min_tokens=lots", "whole number"), ("bad name!:app=a", "group name"),
    ("x:min_tokens=10,max_tokens=5", "min_tokens <= max_tokens"), ("x:prefix=XYZ", "hex"),
])
def test_bad_group_rules_are_refused_with_the_fix(text, word):
    with pytest.raises(ValueError, match=word):
        GroupRule.parse(text)
