"""Redelivered events are answered once: claimed at the gateway, remembered in the process."""

from __future__ import annotations

import asyncio

import pytest

from tertulia.bots.dedup import Deduplicator
from tertulia.common.gateway_client import GatewayUnavailable


class Claims:
    """The gateway's /events: each id claimed once, or an outage on demand."""

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.down = False

    async def claim_event(self, event_id: str, ttl_seconds: int) -> bool:
        if self.down:
            raise GatewayUnavailable("cannot reach the gateway (ConnectError)")
        first = event_id not in self.claimed
        self.claimed.add(event_id)
        return first


async def test_an_event_claimed_by_another_replica_is_not_answered_again() -> None:
    claims = Claims()
    this, other = Deduplicator(claims), Deduplicator(claims)
    assert await this.first_delivery("slack", "Ev1")
    assert not await other.first_delivery("slack", "Ev1")
    assert not await this.first_delivery("slack", "Ev1")
    assert await other.first_delivery("slack", "Ev2")


async def test_while_the_gateway_is_away_the_process_still_catches_a_redelivery() -> None:
    claims = Claims()
    claims.down = True
    bot = Deduplicator(claims)
    assert await bot.first_delivery("slack", "Ev1")
    assert not await bot.first_delivery("slack", "Ev1")
    # The gateway is back and never saw Ev1: the process's memory still says no.
    claims.down = False
    assert not await bot.first_delivery("slack", "Ev1")


async def test_a_redelivery_whose_claim_overtakes_the_first_still_leaves_one_answer() -> None:
    """Slack's retry can arrive while the first delivery's claim is on its way to the gateway,
    and its claim can get there first (two connections, served in either order)."""
    claims = Claims()
    overtaken = asyncio.Event()

    class Slow(Claims):
        calls = 0

        async def claim_event(self, event_id: str, ttl_seconds: int) -> bool:
            self.calls += 1
            if self.calls == 1:
                await overtaken.wait()  # the first delivery's claim, held on the wire
            return await claims.claim_event(event_id, ttl_seconds)

    bot = Deduplicator(Slow())
    first = asyncio.create_task(bot.first_delivery("slack", "Ev1"))
    await asyncio.sleep(0)
    retry = await bot.first_delivery("slack", "Ev1")
    overtaken.set()
    assert [await first, retry] == [True, False]


@pytest.mark.parametrize("platform", ["slack", "telegram"])
async def test_ids_are_claimed_per_platform(platform: str) -> None:
    claims = Claims()
    await Deduplicator(claims).first_delivery(platform, "42")
    assert claims.claimed == {f"{platform}:42"}
