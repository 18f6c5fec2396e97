"""Memory: Redis for the ChatBot's conversations, rate-limit buckets and event de-dup, its
append-only file on a volume of its own: one server, or (replicas 3 to 9) a primary and its
replicas with a Sentinel beside each, Redis's own high availability."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from tertulia.operator.api import ChatBot
from tertulia.operator.render import images
from tertulia.operator.render.common import (
    Manifest,
    claim_spec,
    disruption_budget,
    headless_service,
    labels,
    metadata,
    pod_spec,
    resources,
    restricted_container_security,
    secrets_version,
    service,
    spread,
    stateful_set,
)

COMPONENT = "memory"
PORT = 6379


SENTINEL_PORT = 26379
# The name the Sentinels know the primary by.
SENTINEL_NAME = "memory"


def high_availability(bot: ChatBot) -> bool:
    """Whether the ChatBot's own Redis is a primary with replicas and Sentinels."""
    memory = bot.spec.gateway.memory
    return memory.external is None and memory.replicas > 1


def nodes_service(bot: ChatBot) -> str:
    """The headless Service that names each Redis pod, for the Sentinels and the gateway."""
    return bot.child(f"{COMPONENT}-nodes")


def node_address(bot: ChatBot, index: int) -> str:
    """The DNS name of Redis pod `index`: its Redis and its Sentinel announce themselves by
    it, so a pod that comes back with a new address keeps its name."""
    return f"{bot.child(COMPONENT)}-{index}.{nodes_service(bot)}.{bot.namespace}.svc"


def redis_url(bot: ChatBot) -> str:
    memory = bot.spec.gateway.memory
    if memory.external is not None:
        return memory.external.url
    if high_availability(bot):
        sentinels = ",".join(
            f"{node_address(bot, index)}:{SENTINEL_PORT}" for index in range(memory.replicas)
        )
        return f"redis+sentinel://{sentinels}/{SENTINEL_NAME}/0"
    return f"redis://{bot.child(COMPONENT)}.{bot.namespace}.svc:{PORT}/0"


def memory_secret(bot: ChatBot) -> str:
    """The Secret holding Redis's password: the external Redis's, or the generated one."""
    external = bot.spec.gateway.memory.external
    return external.password_secret_ref.name if external else bot.child(COMPONENT)


def memory_secrets(bot: ChatBot) -> list[str]:
    """Every Secret the gateway reads to reach Redis."""
    external = bot.spec.gateway.memory.external
    if external is not None and external.ca_secret_ref is not None:
        return [memory_secret(bot), external.ca_secret_ref.name]
    return [memory_secret(bot)]


PASSWORD_KEY = "password"  # noqa: S105 - the key's name, not a password
CONFIG_KEY = "redis.conf"
SECRET_PATH = "/etc/tertulia/memory"  # noqa: S105 - a folder


def generated_memory_password(bot: ChatBot, password: str) -> Manifest:
    """Redis's password, made once by the operator: as the gateway reads it (`password`),
    and as a config file Redis starts with (`redis.conf`), so it is in no argument and no
    environment variable of the server."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(bot, COMPONENT, memory_secret(bot), watched=True),
        "type": "Opaque",
        "stringData": {PASSWORD_KEY: password, CONFIG_KEY: f"requirepass {password}\n"},
    }


CA_KEY = "ca.crt"
CA_PATH = "/etc/tertulia/memory-ca"


def password_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The password for the gateway: the volume, its mount, and the file to read."""
    external = bot.spec.gateway.memory.external
    key = external.password_secret_ref.key if external else PASSWORD_KEY
    volume = {
        "name": "memory-password",
        "secret": {
            "secretName": memory_secret(bot),
            "items": [{"key": key, "path": PASSWORD_KEY}],
        },
    }
    mount = {"name": "memory-password", "mountPath": SECRET_PATH, "readOnly": True}
    return volume, mount, f"{SECRET_PATH}/{PASSWORD_KEY}"


def ca_volume(bot: ChatBot) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """The external Redis's CA certificate for the gateway, when the spec names one."""
    external = bot.spec.gateway.memory.external
    if external is None or external.ca_secret_ref is None:
        return None
    ref = external.ca_secret_ref
    volume = {
        "name": "memory-ca",
        "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": CA_KEY}]},
    }
    mount = {"name": "memory-ca", "mountPath": CA_PATH, "readOnly": True}
    return volume, mount, f"{CA_PATH}/{CA_KEY}"


# Only keys with a TTL may be evicted: conversations (each carries its own), never the
# rate-limit buckets or event claims, which the gateway keeps without one (see its store).
EVICTION_POLICY = "volatile-lru"
# The share of the container's memory limit Redis may fill: the rest is for its own overhead
# and for rewriting the append-only file, which forks the server.
MAXMEMORY_SHARE = 0.75
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
DATA_PATH = "/data"


def maxmemory_bytes(resources: dict[str, Any]) -> int:
    """What Redis may hold: a share of the container's memory limit (or, without one, of its
    request)."""
    amounts = resources.get("limits", {}).get("memory") or resources.get("requests", {}).get(
        "memory"
    )
    if amounts is None:
        return 0  # no bound given: Redis's own default, none
    limit: Decimal = parse_quantity(amounts)  # type: ignore[no-untyped-call]
    return int(limit * Decimal(str(MAXMEMORY_SHARE)))


def redis_arguments(maxmemory: int, *, persistent: bool) -> list[str]:
    """redis-server's arguments after its config file: the cap, what it evicts, and the
    append-only file (written every second) when its data is on a volume."""
    arguments = ["--maxmemory", str(maxmemory), "--maxmemory-policy", EVICTION_POLICY]
    arguments += ["--save", "", "--dir", DATA_PATH]
    if persistent:
        return [*arguments, "--appendonly", "yes", "--appendfsync", "everysec"]
    return [*arguments, "--appendonly", "no"]


RUN_PATH = "/run/tertulia"
# A primary's pod that is stopped hands the primary over first, within this (Bitnami's chart
# waits its grace period less 10 s); its grace period leaves the server time to stop after.
HANDOVER_SECONDS = 20
TERMINATION_GRACE_SECONDS = 30
# How far behind a replica may be and still count for min-replicas-to-write (Redis's default).
MIN_REPLICAS_MAX_LAG = 10
# How many times a starting pod asks the other pods' Sentinels, 2 s apart.
ASK_TRIES = 4
# The containers' start scripts wait for their peers: liveness checks begin once they listen.
STARTUP_SECONDS = 180

# Shared by both containers of a pod: which server is the primary now. The Sentinels of the
# other pods know; when none answers (the first start, or every pod restarting), the first
# pod is. A pod that comes back after a failover so joins as a replica of the new primary.
# A peer whose name does not resolve has no pod yet; one whose Sentinel does not answer
# (starting, this pod's network not settled, or a cluster DNS that cannot say "no such
# name") is asked again for a few seconds, so a pod does not start as a second primary
# because its first question went unanswered. (Should it still, the Sentinels turn it into
# a replica of the primary they know when they see it, and clients only ever reach that.)
_FIND_PRIMARY = """set -eu
umask 077
me="$POD_NAME.$NODES"
password="$(cat "$PASSWORD_FILE")"
primary=""
tries=0
while :; do
  waiting=""
  for peer in $PEERS; do
    [ "$peer" = "$me" ] && continue
    said="$(timeout 5 redis-cli --no-auth-warning -h "$peer" -p "$SENTINEL_PORT" \\
      sentinel get-master-addr-by-name "$SENTINEL_NAME" 2>"$RUN_PATH/asked" | head -n 1 || true)"
    case "$said" in
      *".$NODES") primary="$said"; break ;;
    esac
    if ! grep -qiE "not known|does not resolve|no address" "$RUN_PATH/asked"; then
      waiting="$peer"
    fi
  done
  tries=$((tries + 1))
  if [ -n "$primary" ] || [ -z "$waiting" ] || [ "$tries" -ge "$ASK_TRIES" ]; then break; fi
  echo "the Sentinel of $waiting does not answer yet" >&2
  sleep 2
done
primary="${primary:-$FIRST}"
"""

# The Redis server: its config file includes the one holding the password, and adds what the
# password may not be an argument for (the replicas' password for the primary).
_START_REDIS = (
    _FIND_PRIMARY
    + """{
  echo "include $CONFIG_FILE"
  echo "masterauth $password"
  echo "replica-announce-ip $me"
  if [ "$primary" != "$me" ]; then echo "replicaof $primary $REDIS_PORT"; fi
} > "$RUN_PATH/redis.conf"
echo "starting as $([ "$primary" = "$me" ] && echo primary || echo "replica of $primary")"
exec redis-server "$RUN_PATH/redis.conf" "$@"
"""
)

# The Sentinel: it monitors the primary by name (it must resolve when Sentinel starts, so
# wait for it to answer), announces itself by the pod's name and rewrites its file as it
# learns. A primary that never answers restarts the container, which asks again.
_START_SENTINEL = (
    _FIND_PRIMARY
    + """tries=0
until [ "$(timeout 5 redis-cli --no-auth-warning -h "$primary" -p "$REDIS_PORT" ping \\
    2>/dev/null || true)" = PONG ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 60 ]; then echo "the primary $primary does not answer" >&2; exit 1; fi
  sleep 2
done
{
  echo "port $SENTINEL_PORT"
  echo "dir $RUN_PATH"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $me"
  echo "sentinel announce-port $SENTINEL_PORT"
  echo "requirepass $password"
  echo "sentinel sentinel-pass $password"
  echo "sentinel monitor $SENTINEL_NAME $primary $REDIS_PORT $QUORUM"
  echo "sentinel auth-pass $SENTINEL_NAME $password"
  echo "sentinel down-after-milliseconds $SENTINEL_NAME $DOWN_AFTER"
  echo "sentinel failover-timeout $SENTINEL_NAME $FAILOVER_TIMEOUT"
  echo "sentinel parallel-syncs $SENTINEL_NAME 1"
} > "$RUN_PATH/sentinel.conf"
echo "monitoring $primary"
exec redis-server "$RUN_PATH/sentinel.conf" --sentinel
"""
)


# The Redis container's preStop, as Bitnami's chart (prestop-redis.sh) fails over before a
# primary stops, and tighter: writes are paused first (CLIENT PAUSE WRITE, which replication
# is not) until every replica has each one, so whichever the Sentinels promote has them all,
# and this server follows the new primary once the Sentinels' record says so (they would turn
# it into a replica only seconds later). The writes it held then fail with READONLY, and the
# gateway sends them again to the new primary (its connections ask the Sentinels each time
# they connect). A rollout or a drain so costs no write.
# Without a replica online there is no one to hand over to: it stops as before.
_HAND_OVER = """set -u
# What a hook prints is lost with its pod: the last handover's words stay on the claim.
exec >"${HOOK_LOG:-/data/handover.log}" 2>&1
date +%T.%N
me="$POD_NAME.$NODES"
cli() { timeout 5 redis-cli --no-auth-warning "$@"; }
# What a peer says of its replication (nothing when it does not answer).
replication_of() { cli -h "$1" info replication 2>/dev/null | tr -d '\r'; }
[ "$(cli role | head -n 1)" = master ] || exit 0
# A replica restarted a moment ago may still be copying the data: it is waited for a while.
tries=0
until cli info replication | grep -q '^slave[0-9]*:.*state=online'; do
  tries=$((tries + 1))
  if [ "$tries" -ge "$HANDOVER_SECONDS" ]; then
    echo "no replica online to hand the primary to"
    exit 0
  fi
  sleep 0.5
done
cli client pause "$((HANDOVER_SECONDS * 1000))" write >/dev/null
echo "$(date +%T.%N) writes paused"
# Every replica holds every write so far, and follows this server: the Sentinels may choose
# any of them (ranked by offsets they read up to 10 s ago), and a replica that a restart left
# following no one, or another, would be promoted without the last writes. Each replica's
# own offset is asked (this server's view of it is up to a second old); a peer that does not
# answer is not one the Sentinels can promote.
in_step() {
  offset="$(cli info replication | tr -d '\r' | sed -n 's/^master_repl_offset://p')"
  for peer in $PEERS; do
    [ "$peer" = "$me" ] && continue
    state="$(replication_of "$peer")"
    [ -n "$state" ] || continue
    echo "$state" | grep -qx "master_host:$me" || return 1
    echo "$state" | grep -qx 'master_link_status:up' || return 1
    [ "$(echo "$state" | sed -n 's/^slave_repl_offset://p')" -ge "${offset:-0}" ] || return 1
  done
}
# Waited for 5 s at most (it takes well under one), so that with the failover's 20 s the hook
# stays within the pod's grace period.
tries=0
until in_step; do
  tries=$((tries + 1))
  if [ "$tries" -ge 50 ]; then
    echo "not every replica holds every write: $(cli info replication | tr -d '\r' \
      | grep -E '^(slave[0-9]+|master_repl_offset):' | tr '\n' ' ')"
    break
  fi
  sleep 0.1
done
# Asked again every 2 s until taken: a replica started a moment ago may not be known to the
# Sentinels yet (NOGOODSLAVE), and the failover that made this server the primary may still be
# reconfiguring the replicas (INPROG).
waited=0
asked=""
while [ "$waited" -lt "$((HANDOVER_SECONDS * 2))" ]; do
  if [ -z "$asked" ] && [ $((waited % 4)) -eq 0 ]; then
    reply="$(cli -p "$SENTINEL_PORT" sentinel failover "$SENTINEL_NAME" 2>&1)"
    case "$reply" in
      OK*) asked=1; echo "$(date +%T.%N) the Sentinels fail the primary over" ;;
      *) echo "the Sentinels refused the failover for now: $reply" ;;
    esac
  fi
  said=""
  if [ -n "$asked" ]; then
    said="$(cli -p "$SENTINEL_PORT" sentinel get-master-addr-by-name "$SENTINEL_NAME" \
      | head -n 1)"
  fi
  # The Sentinels name the replica they chose at once; it is the primary once it says so, and
  # the failover is over once the Sentinels' record of the primary is that server's, with no
  # failover in progress: clients (redis-py reads SENTINEL MASTERS) find the old one until
  # then, so the writes stay held here rather than fail against a server gone.
  if [ -n "$said" ] && [ "$said" != "$me" ] \
      && [ "$(cli -h "$said" -p "$REDIS_PORT" role | head -n 1)" = master ] \
      && [ "$(cli -p "$SENTINEL_PORT" sentinel master "$SENTINEL_NAME" | awk '
        NR % 2 == 1 { key = $0; next }
        key == "ip" { ip = $0 }
        key == "flags" { flags = $0 }
        END { print (flags ~ /failover/ ? "" : ip) }')" = "$said" ]; then
    echo "$(date +%T.%N) the Sentinels have switched to $said"
    # A replica the Sentinels could not reach to reconfigure (their link to a pod that has
    # just restarted may hang for seconds) follows the new primary too, before writes go on.
    for peer in $PEERS; do
      { [ "$peer" = "$me" ] || [ "$peer" = "$said" ]; } && continue
      state="$(replication_of "$peer")"
      if [ -n "$state" ] && ! echo "$state" | grep -qx "master_host:$said"; then
        cli -h "$peer" replicaof "$said" "$REDIS_PORT" >/dev/null
        echo "$(date +%T.%N) $peer follows $said too"
      fi
    done
    cli replicaof "$said" "$REDIS_PORT" >/dev/null
    cli client unpause >/dev/null
    echo "$(date +%T.%N) handed the primary over to $said"
    exit 0
  fi
  waited=$((waited + 1))
  sleep 0.5
done
cli client unpause >/dev/null
echo "no replica took the primary over; stopping as the primary" >&2
"""

# The Sentinel's preStop: it stays while its pod's server is the primary, since the failover
# that server asks for is this Sentinel's to carry out (its own server says when it is done:
# the Sentinels name the replica they chose from the start, before it is promoted).
_STAY_FOR_HAND_OVER = """waited=0
while [ "$waited" -lt "$((HANDOVER_SECONDS * 2))" ]; do
  [ "$(timeout 5 redis-cli --no-auth-warning -p "$REDIS_PORT" role | head -n 1)" = master ] \
    || exit 0
  waited=$((waited + 1))
  sleep 0.5
done
"""

# Ready: the primary, or a replica whose copy is in step with it; a rolling restart so moves on
# to the next pod only once the last one holds the data, and a primary always has a replica to
# hand over to.
_IN_STEP = "redis-cli info replication | grep -q -e '^role:master' -e '^master_link_status:up'"


def quorum(replicas: int) -> int:
    """Sentinels that must agree a primary is gone: a majority of them."""
    return replicas // 2 + 1


def _high_availability_env(bot: ChatBot) -> list[dict[str, Any]]:
    replicas = bot.spec.gateway.memory.replicas
    values = {
        "NODES": f"{nodes_service(bot)}.{bot.namespace}.svc",
        "PEERS": " ".join(node_address(bot, index) for index in range(replicas)),
        "FIRST": node_address(bot, 0),
        "SENTINEL_NAME": SENTINEL_NAME,
        "SENTINEL_PORT": str(SENTINEL_PORT),
        "REDIS_PORT": str(PORT),
        "QUORUM": str(quorum(replicas)),
        "ASK_TRIES": str(ASK_TRIES),
        "DOWN_AFTER": str(bot.spec.gateway.memory.sentinel.down_after_milliseconds),
        "FAILOVER_TIMEOUT": str(bot.spec.gateway.memory.sentinel.failover_timeout_milliseconds),
        "HANDOVER_SECONDS": str(HANDOVER_SECONDS),
        "PASSWORD_FILE": f"{SECRET_PATH}/{PASSWORD_KEY}",
        "CONFIG_FILE": f"{SECRET_PATH}/{CONFIG_KEY}",
        "RUN_PATH": RUN_PATH,
    }
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *({"name": name, "value": value} for name, value in values.items()),
    ]


def render_memory(
    bot: ChatBot, *, registry: str = "", secret_versions: dict[str, str] | None = None
) -> list[Manifest]:
    """Redis behind a generated password, reached by the gateway alone, its data on a claim
    of its own: conversations, rate limits and event claims outlive the pod. Nothing with an
    external Redis."""
    memory = bot.spec.gateway.memory
    if memory.external is not None:
        return []
    limits = resources(memory.resources, DEFAULT_RESOURCES)
    image = memory.image or images.mirrored(images.REDIS, registry)
    arguments = redis_arguments(maxmemory_bytes(limits), persistent=memory.persistent)
    container: dict[str, Any] = {
        "name": "redis",
        "image": image,
        # The config file (first, as redis-server wants it) holds only the password.
        "args": [f"{SECRET_PATH}/{CONFIG_KEY}", *arguments],
        "ports": [{"name": "redis", "containerPort": PORT}],
        # redis-cli reads the password from REDISCLI_AUTH.
        "env": [
            {
                "name": "REDISCLI_AUTH",
                "valueFrom": {"secretKeyRef": {"name": memory_secret(bot), "key": PASSWORD_KEY}},
            }
        ],
        # Ready once the append-only file is loaded: Redis answers LOADING (not PONG) until then.
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 10},
        "resources": limits,
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_PATH},
            {"name": "config", "mountPath": SECRET_PATH, "readOnly": True},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "secret": {
                "secretName": memory_secret(bot),
                "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
            },
        }
    ]
    if not memory.persistent:
        # The size a claim would have had: what Redis writes there is bounded by it too.
        volumes.insert(0, {"name": "data", "emptyDir": {"sizeLimit": memory.storage}})
    containers = [container]
    extra: dict[str, Any] = {}
    if high_availability(bot):
        containers = _with_sentinel(bot, container, image, arguments)
        volumes[-1]["secret"]["items"].append({"key": PASSWORD_KEY, "path": PASSWORD_KEY})
        volumes.append({"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
        extra["topologySpreadConstraints"] = spread(bot, COMPONENT, revision_label=None)
        extra["terminationGracePeriodSeconds"] = TERMINATION_GRACE_SECONDS
    pod = pod_spec(
        bot,
        containers,
        volumes=volumes,
        securityContext={"runAsNonRoot": True, "runAsUser": 999, "fsGroup": 999},
        **extra,
    )
    claims = []
    if memory.persistent:
        claims.append(
            {
                "metadata": {"name": "data", "labels": labels(bot, COMPONENT)},
                "spec": claim_spec(memory.storage, memory.storage_class_name),
            }
        )
    statefulset = stateful_set(
        bot,
        COMPONENT,
        pod,
        annotations=secrets_version(secret_versions, [memory_secret(bot)]),
        claims=claims,
    )
    if not high_availability(bot):
        return [statefulset, service(bot, COMPONENT, PORT, "redis")]
    # One pod at a time, the first first: each new one finds the primary through the
    # Sentinels of those before it.
    statefulset["spec"] |= {"replicas": memory.replicas, "serviceName": nodes_service(bot)}
    return [
        statefulset,
        # The Sentinels alone: a client of the port of a replica could not write.
        service(bot, COMPONENT, SENTINEL_PORT, "sentinel"),
        _nodes_service(bot),
        disruption_budget(bot, COMPONENT),
    ]


def _with_sentinel(
    bot: ChatBot, redis: dict[str, Any], image: str, arguments: list[str]
) -> list[dict[str, Any]]:
    """The Redis container started as the primary or a replica of it, and a Sentinel beside
    it, both from the same image."""
    env = [*redis["env"], *_high_availability_env(bot)]
    run = {"name": "run", "mountPath": RUN_PATH}
    guard = bot.spec.gateway.memory.sentinel.min_replicas_to_write
    if guard:
        arguments = [
            *arguments,
            *("--min-replicas-to-write", str(guard)),
            *("--min-replicas-max-lag", str(MIN_REPLICAS_MAX_LAG)),
        ]
    redis = {
        **redis,
        "command": ["sh", "-c", _START_REDIS, "redis"],
        "args": arguments,
        "env": env,
        "startupProbe": _started(PORT),
        "readinessProbe": {"exec": {"command": ["sh", "-c", _IN_STEP]}, "periodSeconds": 5},
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", _HAND_OVER]}}},
        "volumeMounts": [*redis["volumeMounts"], run],
    }
    sentinel = {
        "name": "sentinel",
        "image": image,
        "command": ["sh", "-c", _START_SENTINEL, "sentinel"],
        "ports": [{"name": "sentinel", "containerPort": SENTINEL_PORT}],
        "env": env,
        "readinessProbe": {
            "exec": {"command": ["redis-cli", "-p", str(SENTINEL_PORT), "ping"]},
            "periodSeconds": 5,
        },
        "startupProbe": _started(SENTINEL_PORT),
        "livenessProbe": {"tcpSocket": {"port": SENTINEL_PORT}, "periodSeconds": 10},
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", _STAY_FOR_HAND_OVER]}}},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": restricted_container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": SECRET_PATH, "readOnly": True},
            run,
        ],
    }
    return [redis, sentinel]


def _started(port: int) -> dict[str, Any]:
    """Listening on `port`, within STARTUP_SECONDS: the start script asks its peers first."""
    return {
        "tcpSocket": {"port": port},
        "periodSeconds": 5,
        "failureThreshold": STARTUP_SECONDS // 5,
    }


def _nodes_service(bot: ChatBot) -> Manifest:
    return headless_service(
        bot,
        COMPONENT,
        nodes_service(bot),
        [
            {"name": "redis", "port": PORT, "targetPort": PORT},
            {"name": "sentinel", "port": SENTINEL_PORT, "targetPort": SENTINEL_PORT},
        ],
    )
