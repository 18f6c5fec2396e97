"""Which model server replica answers a request: every turn of a conversation the same one
(consistent hashing with bounded load), so the engine's prefix cache holds the conversation's
history; or round-robin, for engines without such a cache.

A conversation's replica, its home, is chosen once: the first replica on its way round the
ring that holds fewer than its bound of the conversations active on this gateway (those seen
in the last HOME_IDLE_SECONDS), and kept until it leaves, a joining replica becomes the
conversation's owner on the ring, or the conversation has been idle that long. A request
whose home is over its bound of the requests in flight goes elsewhere, this once: to the
replica that answered the conversation's latest turn away from home, which holds the longest
prefix of it outside its home, or else to the next replica on the ring. The bound on requests
in flight is 1.25 times the even share, and never below what a replica serves at once without
slowing (its engine's slots, or the autoscaler's target): at low load a conversation stays
home.

The replicas are the ready pods of the model's headless Service, as its DNS name lists them
(only ready pods are published), looked up again every few seconds: the gateway needs no
access to the Kubernetes API for it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import logging
import math
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from tertulia.gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

Routing = Literal["affinity", "round-robin"]

# Points each replica has on the ring: enough that shares stay within a few percent of even.
POINTS_PER_REPLICA = 160
# A replica may carry this many times its even share of the requests in flight before a
# conversation that hashes to it goes to the next replica on the ring (HAProxy's
# hash-balance-factor 125; the bound of Mirrokni, Thorup and Zadimoghaddam).
BALANCE = 1.25
# Seconds between lookups of the replicas while requests wait for one.
HURRIED_REFRESH_SECONDS = 0.5
# Failed lookups in a row after which the replicas known are forgotten: requests then go to
# the Service (or wait for a replica, when the model autoscales) rather than to pods that
# may be long gone.
STALE_LOOKUPS = 5
# Seconds a replica that could not be connected to is left out (see Router.eject): longer
# than a cluster DNS keeps listing a pod that has gone (its TTL, 5 s in CoreDNS, plus a lookup).
EJECT_SECONDS = 10.0
# Seconds after its last request that a conversation no longer counts on its replica (an
# engine's cache has moved on by then, or the user has).
HOME_IDLE_SECONDS = 600.0
RESOLV_CONF = Path("/etc/resolv.conf")


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    """A consistent-hash ring of replicas: a key's replicas in the order it tries them. A
    replica that joins or leaves moves only the keys whose first choice it is (or becomes)."""

    def __init__(self, replicas: Sequence[str], points: int = POINTS_PER_REPLICA) -> None:
        self.replicas = tuple(sorted(set(replicas)))
        pairs = sorted(
            (_point(f"{replica}#{index}"), replica)
            for replica in self.replicas
            for index in range(points)
        )
        self._points = [point for point, _ in pairs]
        self._owners = [replica for _, replica in pairs]

    def order(self, key: str) -> Iterator[str]:
        """Every replica once, starting with the owner of `key`'s point and going round."""
        if not self._points:
            return
        start = bisect.bisect(self._points, _point(key))
        seen: set[str] = set()
        for index in range(start, start + len(self._owners)):
            owner = self._owners[index % len(self._owners)]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.replicas):
                    return


def bounded_choice(
    order: list[str], load: Mapping[str, int], balance: float = BALANCE, floor: int = 1
) -> str:
    """The first replica of `order` (a key's way round the ring) with room for one more: its
    load (conversations, or requests in flight) below `balance` times the even share of all
    of it, this one included, or below `floor`, whichever is more."""
    if not order:
        raise ValueError("no replicas")
    total = sum(load.get(replica, 0) for replica in order) + 1
    cap = max(floor, math.ceil(balance * total / len(order)))
    for replica in order:
        if load.get(replica, 0) < cap:
            return replica
    return order[0]  # unreachable: some replica is always below the cap


@dataclass
class Pick:
    """A replica chosen for one request, and the ones to try after it if it cannot be
    reached; `affinity` says whether it is the conversation's own (not a neighbour)."""

    url: str
    fallbacks: list[str] = field(default_factory=list)
    affinity: bool | None = None


class Router:
    """Chooses a replica's base URL for each request and counts the requests in flight on
    each. Without replicas (none found yet, or routing off) every request goes to `url`."""

    def __init__(self, url: str, routing: Routing = "affinity", capacity: int = 1) -> None:
        self.url = url.rstrip("/")
        self.routing: Routing = routing
        # Requests a replica serves at once without slowing: below it, a replica always
        # takes its own conversations' turns, whatever the others carry.
        self.capacity = capacity
        self._ring = Ring([])
        # What the lookup lists, and those of them left out for a while (see eject).
        self._listed: tuple[str, ...] = ()
        self._ejected: dict[str, float] = {}
        self._load: dict[str, int] = {}
        # Each active conversation's replica and when it was last used, oldest first; and
        # the count of them each replica holds.
        self._homes: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._residents: Counter[str] = Counter()
        # For each active conversation, the replicas that answered it away from home, each
        # with the sequence number of its latest turn there (the highest holds the most).
        self._away: dict[str, dict[str, int]] = {}
        self._sequence = itertools.count()
        self._turn = itertools.count()
        # Set while some replica is ready: what a request held at zero replicas waits on.
        self.ready = asyncio.Event()

    @property
    def replicas(self) -> tuple[str, ...]:
        return self._ring.replicas

    def load(self, replica: str) -> int:
        return self._load.get(replica, 0)

    def in_flight(self) -> int:
        """Every request in flight: on the replicas, on replicas that have left, and those
        sent to the Service (`url`)."""
        return sum(self._load.values())

    def update(self, replicas: Sequence[str]) -> bool:
        """The replicas now ready; whether the ones requests may go to changed."""
        self._listed = tuple(sorted(set(replicas)))
        now = time.monotonic()
        self._ejected = {
            replica: until
            for replica, until in self._ejected.items()
            if until > now and replica in self._listed
        }
        return self._rebuild()

    def eject(self, replica: str, seconds: float = EJECT_SECONDS) -> None:
        """Leave out `replica`, which a connection could not reach, for `seconds` or until
        the lookup no longer lists it: the DNS may list a pod for a few seconds after it has
        gone, and each request would wait out its connection timeout."""
        if replica in self._listed:
            self._ejected[replica] = time.monotonic() + seconds
            self._rebuild()

    def _rebuild(self) -> bool:
        usable = [replica for replica in self._listed if replica not in self._ejected]
        if tuple(usable) == self._ring.replicas:
            return False
        joined = set(usable) - set(self._ring.replicas)
        self._ring = Ring(usable)
        # Conversations leave a replica that has gone, and go to one that joined where it is
        # their owner now: the moves consistent hashing makes, and no others.
        for key, (home, _) in list(self._homes.items()):
            if home not in usable or (joined and next(self._ring.order(key)) in joined):
                self._leave(key)
        if self._ring.replicas:
            self.ready.set()
        else:
            self.ready.clear()
        return True

    def pick(self, key: str | None) -> Pick:
        replicas = self._ring.replicas
        if not replicas:
            return Pick(self.url)
        if self.routing == "affinity" and key:
            order = list(self._ring.order(key))
            home = self._home(key, order)
            # Where the turn must move: the replica with its latest turn away from home
            # first (its cache holds the longest prefix there), then the ring's order (a
            # stable sort keeps it among the others).
            away = self._away.get(key, {})
            rest = sorted(
                (replica for replica in order if replica != home),
                key=lambda replica: away.get(replica, -1),
                reverse=True,
            )
            order = [home, *rest]
            chosen = bounded_choice(order, self._load, floor=self.capacity)
            if chosen != home:
                self._away.setdefault(key, {})[chosen] = next(self._sequence)
            rest = [replica for replica in order if replica != chosen]
            return Pick(chosen, rest, affinity=chosen == home)
        start = next(self._turn) % len(replicas)
        rotated = [*replicas[start:], *replicas[:start]]
        return Pick(rotated[0], rotated[1:])

    def home(self, key: str) -> str | None:
        """The replica conversation `key` is kept on, if it is active."""
        found = self._homes.get(key)
        return found[0] if found else None

    def _home(self, key: str, order: list[str]) -> str:
        """`key`'s replica: the one it has, or the first on its way round the ring within
        its bound of the active conversations."""
        now = time.monotonic()
        while self._homes:
            oldest, (_, seen) = next(iter(self._homes.items()))
            if seen > now - HOME_IDLE_SECONDS:
                break
            self._leave(oldest)
        found = self._homes.get(key)
        home = found[0] if found else bounded_choice(order, self._residents)
        if not found:
            self._residents[home] += 1
        self._homes[key] = (home, now)
        self._homes.move_to_end(key)
        return home

    def _leave(self, key: str) -> None:
        self._away.pop(key, None)
        home, _ = self._homes.pop(key)
        self._residents[home] -= 1
        if not self._residents[home]:
            del self._residents[home]

    def acquire(self, replica: str) -> None:
        """One more request in flight on `replica`."""
        self._load[replica] = self._load.get(replica, 0) + 1

    def release(self, replica: str) -> None:
        """One request fewer in flight on `replica`."""
        self._load[replica] -= 1
        if not self._load[replica] and replica not in self._ring.replicas:
            del self._load[replica]


def replica_urls(url: str, addresses: Sequence[str]) -> list[str]:
    """`url` (a base URL such as http://svc:8000/v1) with its host replaced by each address."""
    parts = urlsplit(url.rstrip("/"))
    port = f":{parts.port}" if parts.port is not None else ""
    return [
        urlunsplit(
            (
                parts.scheme,
                f"[{address}]{port}" if ":" in address else f"{address}{port}",
                parts.path,
                "",
                "",
            )
        )
        for address in sorted(set(addresses))
    ]


# What getaddrinfo says of a name without addresses (other errors are the lookup failing).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


async def resolve(name: str) -> list[str]:
    """The addresses a DNS name has now (a headless Service: its ready pods); none when the
    name has none (a headless Service without ready pods is NXDOMAIN)."""
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in _NO_SUCH_NAME:
            return []
        raise
    return sorted({str(entry[4][0]) for entry in found})


def qualified(name: str, resolv_conf: Path = RESOLV_CONF) -> str:
    """A Service's name (NAME.NAMESPACE.svc) made absolute in the cluster's domain, which the
    pod's resolver searches (svc.DOMAIN): looked up as given, the resolver also tries it bare
    after the search domains, and a cluster DNS that cannot reach an upstream (an air-gapped
    cluster) then fails the whole lookup ("temporary failure") instead of saying that the
    Service lists no pod. Other names, and names outside a pod, are left as they are."""
    if not name.endswith(".svc"):
        return name
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return name
    for line in lines:
        words = line.split()
        if words[:1] == ["search"]:
            for domain in words[1:]:
                if domain.startswith("svc."):
                    return f"{name}.{domain[4:].rstrip('.')}."
    return name


async def follow_replicas(
    router: Router,
    name: str,
    interval: float,
    metrics: GatewayMetrics | None = None,
    hurried: Callable[[], bool] = lambda: False,
) -> None:
    """Keep `router`'s replicas those `name` resolves to (a DNS name, or several, comma
    separated, or addresses), looked up every `interval` s, or every half second while
    `hurried()` (requests wait for a replica). A lookup that fails keeps the replicas known
    (a DNS hiccup is not every pod gone) for STALE_LOOKUPS lookups, then forgets them."""
    names = [qualified(part.strip()) for part in name.split(",") if part.strip()]
    failures = 0
    while True:
        addresses: list[str] | None = None
        try:
            addresses = [address for one in names for address in await resolve(one)]
            failures = 0
        except OSError as error:
            failures += 1
            logger.warning(
                "cannot look up the model replicas",
                extra={"error": str(error), "failures": failures},
            )
            if failures >= STALE_LOOKUPS:
                addresses = []
        if addresses is not None:
            before = set(router.replicas)
            urls = replica_urls(router.url, addresses)
            if router.update(urls):
                logger.info("model replicas changed", extra={"replicas": urls})
            if metrics is not None:
                metrics.backend_replicas.set(len(urls))
                for gone in before - set(urls):
                    if not router.load(gone):
                        with contextlib.suppress(KeyError):
                            metrics.backend_in_flight.remove(gone)
        pause = interval
        while pause > 0:
            step = min(pause, HURRIED_REFRESH_SECONDS)
            await asyncio.sleep(step)
            pause = 0 if hurried() else pause - step
