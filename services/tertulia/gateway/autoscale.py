"""The model's replicas follow its load, down to zero and back.

Every gateway replica reports its load (requests in flight to the model, and requests
waiting for it) to Redis each `interval_seconds`; the one that holds the lock there sums them
and sets the ChatBot's replicas through its scale subresource, the one `kubectl scale` and a
HorizontalPodAutoscaler use, to the load over `target_in_flight`, between the minimum and the
maximum. Replicas come at once and go only after `scale_down_delay_seconds`: the most replicas
any moment of that window asked for is what is kept, so a load that comes and goes does not
make them flap. Why the model has the replicas it has is written to the ChatBot's
`status.autoscaling`.

At zero replicas a request is held (at most `queue_length` per gateway, for at most
`queue_timeout_seconds`, then 503 with Retry-After), and the gateway that holds it scales the
model from zero at once, whichever gateway leads; the request goes on as soon as a replica is
ready (the headless Service lists it).

The gateway's ServiceAccount may read and set its own ChatBot's scale and patch its status,
nothing else (the operator renders that Role).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from tertulia.gateway.errors import BackendUnavailable, GatewayError
from tertulia.gateway.metrics import GatewayMetrics
from tertulia.gateway.routing import HURRIED_REFRESH_SECONDS, Router
from tertulia.gateway.settings import AutoscalingSettings, KubernetesSettings
from tertulia.gateway.store import Store

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "tertulia.dev", "v1alpha1", "chatbots"
# What a client told to come back later waits: about what a held request would have.
RETRY_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class Decision:
    """The replicas the model should have, and why, in a sentence for `status`."""

    replicas: int
    reason: str


def recommend(load: int, target: float, minimum: int, maximum: int) -> int:
    """Replicas for `load` requests at `target` each, between `minimum` and `maximum`; at
    least one while any request is in flight or waiting."""
    wanted = math.ceil(load / target) if load > 0 else 0
    return max(minimum, min(maximum, wanted))


class Recommender:
    """The autoscaler's decisions: replicas come at once, and go once the load has asked for
    fewer for `delay` seconds (the window's highest recommendation is kept). A count set by
    someone else (a request waking the model, `kubectl scale`) starts a new window from it,
    so it is kept for `delay` too unless the load asks for more."""

    def __init__(self, minimum: int, maximum: int, target: float, delay: float) -> None:
        self.minimum, self.maximum, self.target, self.delay = minimum, maximum, target, delay
        self._window: deque[tuple[float, int]] = deque()
        self._set: int | None = None

    def decide(self, now: float, load: int, current: int) -> Decision:
        if current != self._set:
            self._window.clear()
            self._window.append((now, max(self.minimum, min(self.maximum, current))))
        wanted = recommend(load, self.target, self.minimum, self.maximum)
        self._window.append((now, wanted))
        while self._window[0][0] < now - self.delay:
            self._window.popleft()
        replicas = max(count for _, count in self._window)
        self._set = replicas
        return Decision(replicas, self._reason(load, wanted, replicas))

    def _reason(self, load: int, wanted: int, replicas: int) -> str:
        if replicas > wanted:
            return (
                f"{load} requests in flight or waiting ask for {wanted}; {replicas} kept for the "
                f"scale-down delay ({self.delay:g} s)"
            )
        if load == 0:
            return f"no requests for {self.delay:g} s: the minimum, {self.minimum}"
        needed = math.ceil(load / self.target)
        if needed > self.maximum:
            return (
                f"{load} requests in flight or waiting at {self.target:g} per replica would "
                f"need {needed}: capped at the maximum, {self.maximum}"
            )
        if needed < self.minimum:
            return f"{load} requests in flight or waiting: the minimum, {self.minimum}"
        return f"{load} requests in flight or waiting at {self.target:g} per replica"


# Reads and conditional patches of the scale before a wake gives up (each 409 is a change
# made between the two, which a status write makes every few seconds while pods start).
WAKE_ATTEMPTS = 5


class ScaleTarget:
    """The ChatBot's scale subresource and status, through the Kubernetes API."""

    def __init__(self, chatbot: str, namespace: str, settings: KubernetesSettings) -> None:
        self.chatbot = chatbot
        self._settings = settings
        url = settings.api_url or _in_cluster_url()
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None and settings.ca_file.is_file():
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        elif settings.ca_file is not None:
            # Not in a pod with its ServiceAccount mounted: each round fails and says why.
            logger.warning(
                "no CA file for the Kubernetes API", extra={"path": str(settings.ca_file)}
            )
        self._client = httpx.AsyncClient(base_url=url, verify=verify, timeout=10.0)
        where = (quote(namespace, safe=""), quote(chatbot, safe=""))
        self._path = f"/apis/{GROUP}/{VERSION}/namespaces/{where[0]}/{PLURAL}/{where[1]}"

    async def replicas(self) -> int:
        """The replicas the ChatBot asks for now (its scale's spec)."""
        response = await self._request("GET", "/scale")
        return int(response.json().get("spec", {}).get("replicas", 0))

    async def scale(self, replicas: int) -> None:
        await self._request("PATCH", "/scale", {"spec": {"replicas": replicas}})

    async def wake(self) -> bool:
        """One replica if there are none; whether this call set it. The patch holds only over
        the version read: a 409 means the ChatBot changed since (most often a status write,
        the operator's or a gateway's report), so the scale is read again, and left alone
        once another gateway, or a person, has set replicas."""
        for _ in range(WAKE_ATTEMPTS):
            scale = (await self._request("GET", "/scale")).json()
            if scale.get("spec", {}).get("replicas", 0):  # 0 is left out of a Scale
                return False
            patch = {
                "metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]},
                "spec": {"replicas": 1},
            }
            try:
                await self._request("PATCH", "/scale", patch)
            except ScaleFailed as error:
                if error.status == 409:
                    continue
                raise
            return True
        raise ScaleFailed(409, f"the ChatBot changed under each of {WAKE_ATTEMPTS} tries")

    async def report(self, status: dict[str, Any]) -> None:
        await self._request("PATCH", "/status", {"status": {"autoscaling": status}})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(
        self, method: str, path: str, patch: dict[str, Any] | None = None
    ) -> httpx.Response:
        """One call on the ChatBot's `path`; `patch`, a JSON merge patch, is its body."""
        try:
            token = self._settings.token_file.read_text().strip()
        except OSError as error:
            # No token mounted (the pod's ServiceAccount token is mounted only with
            # autoscaling), or run outside a cluster without `kubernetes.token_file`.
            reason = f"cannot read the API token {self._settings.token_file}: {error.strerror}"
            raise ScaleFailed(0, reason) from error
        headers = {"Authorization": f"Bearer {token}"}
        content = None
        if patch is not None:
            headers["Content-Type"] = "application/merge-patch+json"
            content = json.dumps(patch).encode()
        try:
            response = await self._client.request(
                method, self._path + path, content=content, headers=headers
            )
        except httpx.HTTPError as error:
            reason = f"the Kubernetes API cannot be reached: {type(error).__name__}"
            raise ScaleFailed(0, reason) from error
        if response.status_code >= 400:
            try:
                message = str(response.json().get("message", ""))
            except ValueError:
                message = response.reason_phrase
            raise ScaleFailed(response.status_code, message)
        return response


class ScaleFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


def _in_cluster_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class Autoscaler:
    """One gateway's part: it reports its load, holds requests while the model has no ready
    replica, and, while it leads, decides the replicas."""

    def __init__(
        self,
        settings: AutoscalingSettings,
        router: Router,
        store: Store,
        metrics: GatewayMetrics,
        target: ScaleTarget | None = None,
        member: str | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.store = store
        self.metrics = metrics
        self.target = target or ScaleTarget(
            settings.chatbot, settings.namespace, settings.kubernetes
        )
        self.member = member or socket.gethostname()
        self.recommender = Recommender(
            settings.min_replicas,
            settings.max_replicas,
            settings.target_in_flight,
            settings.scale_down_delay_seconds,
        )
        self.waiting = 0
        self._waking: asyncio.Task[None] | None = None
        # Set once the model's Service takes connections, while requests wait (see hold).
        self._service = asyncio.Event()
        self._reported: tuple[int, str] | None = None
        self._last_scale = ""

    def load(self) -> int:
        """This gateway's requests in flight to the model (to a replica, one that has left,
        or the Service), and those waiting for it."""
        return self.router.in_flight() + self.waiting

    async def hold(self) -> None:
        """Return once the model has a ready replica (the lookup lists one, or its Service
        takes connections: the request then goes through the Service); wake it if it has
        none. 503 with Retry-After when too many requests wait already, or a replica takes
        too long."""
        if self.router.replicas:
            return
        settings = self.settings
        if self.waiting >= settings.queue_length:
            self.metrics.queue_wait_seconds.labels("full").observe(0)
            raise BackendUnavailable(
                f"the model is starting and {self.waiting} requests already wait for it; "
                "try again shortly",
                retry_after=RETRY_AFTER_SECONDS,
            )
        self.waiting += 1
        self.metrics.queued.inc()
        started = time.monotonic()
        outcome = "timeout"
        if self._waking is None or self._waking.done():
            self._service.clear()
            self._waking = asyncio.create_task(self._wake(), name="wake-the-model")
        try:
            await asyncio.wait_for(self._ready(), settings.queue_timeout_seconds)
            outcome = "served"
        except TimeoutError:
            raise BackendUnavailable(
                f"the model did not start within {settings.queue_timeout_seconds:g} s; "
                "try again shortly",
                retry_after=RETRY_AFTER_SECONDS,
            ) from None
        finally:
            self.waiting -= 1
            self.metrics.queued.dec()
            self.metrics.queue_wait_seconds.labels(outcome).observe(time.monotonic() - started)

    async def _ready(self) -> None:
        """Until the lookup lists a replica or the Service takes a connection."""
        listed = asyncio.create_task(self.router.ready.wait())
        reachable = asyncio.create_task(self._service.wait())
        try:
            await asyncio.wait([listed, reachable], return_when=asyncio.FIRST_COMPLETED)
        finally:
            listed.cancel()
            reachable.cancel()

    async def _probe_service(self) -> None:
        """While requests wait: whether the model's Service takes a connection, every half
        second. A Service without a ready pod refuses at once (kube-proxy rejects), so this
        sees the first replica as soon as the node's rules do, before the cluster DNS's
        cache of the headless name's empty answer (5 s in CoreDNS) has run out."""
        parts = urlsplit(self.router.url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        while not self._service.is_set():
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(HURRIED_REFRESH_SECONDS)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            logger.info("the model's Service takes connections: held requests go on")
            self._service.set()

    async def _wake(self) -> None:
        probe = asyncio.create_task(self._probe_service(), name="probe-the-model-service")
        try:
            await self._scale_from_zero()
            await asyncio.wait_for(self.router.ready.wait(), self.settings.queue_timeout_seconds)
        except TimeoutError:
            pass
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def _scale_from_zero(self) -> None:
        try:
            if await self.target.wake():
                self.metrics.scale_events.labels("wake").inc()
                self._last_scale = _now()
                logger.info("scaled the model from zero for a waiting request")
                await self._report(1, "a request arrived while the model had no replica")
        except ScaleFailed as error:
            # The leader scales it up on the load it sees; the request waits on.
            logger.warning("cannot scale the model from zero", extra={"error": str(error)})

    async def run(self) -> None:
        """Report and decide every interval until cancelled; an error is logged and the
        next tick tries again."""
        while True:
            try:
                await self.tick()
            except (ScaleFailed, GatewayError) as error:
                logger.warning("autoscaling failed this time", extra={"error": str(error)})
            except Exception:  # anything else: logged, and the next round tries again
                logger.exception("autoscaling failed this time")
            await asyncio.sleep(self.settings.interval_seconds)

    async def tick(self) -> Decision | None:
        """One round: this gateway's load in, and, if it leads, the replicas set. The
        decision made, if any."""
        interval = self.settings.interval_seconds
        total, leads = await self.store.share_load(self.member, self.load(), 3 * interval)
        self.metrics.load.set(total)
        if not leads:
            return None
        current = await self.target.replicas()
        decision = self.recommender.decide(time.monotonic(), total, current)
        self.metrics.desired_replicas.set(decision.replicas)
        if decision.replicas != current:
            await self.target.scale(decision.replicas)
            direction = "up" if decision.replicas > current else "down"
            self.metrics.scale_events.labels(direction).inc()
            self._last_scale = _now()
            logger.info(
                "scaled the model",
                extra={"from": current, "to": decision.replicas, "reason": decision.reason},
            )
        await self._report(decision.replicas, decision.reason)
        return decision

    async def _report(self, replicas: int, reason: str) -> None:
        if self._reported == (replicas, reason):
            return
        await self.target.report(
            {
                "desiredReplicas": replicas,
                "reason": reason,
                "lastScaleTime": self._last_scale or None,
            }
        )
        self._reported = (replicas, reason)

    async def aclose(self) -> None:
        if self._waking is not None:
            self._waking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waking
        await self.target.aclose()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
