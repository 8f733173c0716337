"""A channel's member weights with their groups' shares (gateway.channels.plan)."""
from __future__ import annotations

import msgspec
import pytest

from gateway.channels.plan import effective_weights
from gateway.config.model import Channel


def channel(members, groups=()):
    return msgspec.convert({"name": "c", "port": 80, "members": members,
                            "member_groups": list(groups)}, Channel)


def shares(weights):
    total = sum(weights)
    return [w / total for w in weights]


def test_without_groups_the_weights_are_the_members_own():
    assert effective_weights(channel([{"host": "a", "weight": 5}, {"host": "b", "weight": 0},
                                      {"host": "c", "weight": 2, "enabled": False}])) == [5, 0, 0]


def test_groups_split_first_then_their_members():
    got = effective_weights(channel(
        [{"host": "a", "weight": 1, "group": "x"}, {"host": "b", "weight": 3, "group": "x"},
         {"host": "c", "weight": 7, "group": "y"}],
        [{"name": "x", "weight": 2}, {"name": "y", "weight": 1}]))
    assert shares(got) == pytest.approx([2 / 3 * 1 / 4, 2 / 3 * 3 / 4, 1 / 3])
    assert all(isinstance(w, int) for w in got)


def test_a_disabled_member_leaves_its_share_to_its_group():
    got = effective_weights(channel(
        [{"host": "a", "group": "x"}, {"host": "b", "group": "x", "enabled": False},
         {"host": "c", "group": "y"}],
        [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}]))
    assert got[1] == 0 and got[0] == got[2]


def test_members_without_a_group_form_one_of_weight_one():
    got = effective_weights(channel(
        [{"host": "a", "group": "x"}, {"host": "b"}, {"host": "c"}],
        [{"name": "x", "weight": 2}]))
    assert shares(got) == pytest.approx([2 / 3, 1 / 6, 1 / 6])


def test_huge_common_denominators_are_rounded_to_a_millionth():
    primes = [9973, 9967, 9949, 9941, 9931, 9929, 9923]
    members = [{"host": f"h{i}", "weight": p, "group": f"g{i}"} for i, p in enumerate(primes)]
    members += [{"host": f"o{i}", "weight": 1, "group": f"g{i}"} for i in range(len(primes))]
    groups = [{"name": f"g{i}", "weight": 1} for i in range(len(primes))]
    got = effective_weights(channel(members, groups))
    exact = [1 / 7 * p / (p + 1) for p in primes] + [1 / 7 / (p + 1) for p in primes]
    assert max(got) <= 1 << 40
    assert shares(got) == pytest.approx(exact, abs=2e-6)
