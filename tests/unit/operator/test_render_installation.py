"""What a cluster's installation asks of every render: mirrored images, pull Secrets,
priorities, runtime classes, resources for each component, and the metrics scrape."""

from __future__ import annotations

from typing import Any

import pytest

from tertulia.operator.api import ChatBot, ChatBotSpec, SecretRef
from tertulia.operator.render import Installation, render_all
from tertulia.operator.render.images import REDIS, THIRD_PARTY, mirrored
from tests.unit.operator.test_render import EXAMPLES, IMAGE, by_ref, example, load


def pods(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each workload's pod template, by the workload's name."""
    found = {}
    for manifest in manifests:
        spec = manifest.get("spec", {})
        if manifest["kind"] in ("Deployment", "StatefulSet") or manifest["kind"] == "Job":
            found[manifest["metadata"]["name"]] = spec["template"]["spec"]
    return found


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def with_spec(bot: ChatBot, spec: dict[str, Any]) -> ChatBot:
    body = bot.spec.model_dump(by_alias=True, exclude_unset=True)
    return bot.model_copy(update={"spec": ChatBotSpec.model_validate(_merge(body, spec))})


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize(
    ("image", "mirror"),
    [
        ("redis:7.4.11-alpine", "mirror.corp:5000/hub/library/redis:7.4.11-alpine"),
        (
            "vllm/vllm-openai:v0.30.0-cu129@sha256:a67f",
            "mirror.corp:5000/hub/vllm/vllm-openai:v0.30.0-cu129@sha256:a67f",
        ),
        (
            "ghcr.io/ggml-org/llama.cpp:server-b11312",
            "mirror.corp:5000/hub/ggml-org/llama.cpp:server-b11312",
        ),
        ("localhost/tool:1", "mirror.corp:5000/hub/tool:1"),
    ],
)
def test_a_mirror_keeps_the_repository_and_replaces_the_registry(image: str, mirror: str) -> None:
    assert mirrored(image, "mirror.corp:5000/hub/") == mirror
    assert mirrored(image, "") == image


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_with_a_registry_every_third_party_image_comes_from_it(path: Any) -> None:
    bot = load(path)
    manifests = render_all(bot, image=IMAGE, installation=Installation(registry="mirror.corp"))
    for name, pod in pods(manifests).items():
        for container in containers(pod):
            assert container["image"] == IMAGE or container["image"].startswith("mirror.corp/"), (
                name
            )
    upstream = render_all(bot, image=IMAGE)
    used = {c["image"] for pod in pods(upstream).values() for c in containers(pod)} - {IMAGE}
    assert used <= set(THIRD_PARTY.values())


def test_pinned_digests_stay_unless_the_installation_drops_them_and_a_users_stay_always() -> None:
    bot = with_spec(example("local"), {"model": {"image": "corp/llama@sha256:" + "0" * 64}})
    memory = f"{bot.name}-memory"

    def images(installation: Installation) -> dict[str, str]:
        found = pods(render_all(bot, image=IMAGE, installation=installation))
        return {name: pod["containers"][0]["image"] for name, pod in found.items()}

    pinned = images(Installation())
    assert pinned[memory] == REDIS and "@sha256:" in REDIS
    assert images(Installation(registry="mirror.corp"))[memory] == mirrored(REDIS, "mirror.corp")
    by_tag = images(Installation(digests=False))
    assert by_tag[memory] == "redis:7.4.11-alpine"
    assert images(Installation(registry="mirror.corp", digests=False))[memory] == (
        "mirror.corp/library/redis:7.4.11-alpine"
    )
    # A digest the user chose is theirs to keep.
    assert (
        by_tag[f"{bot.name}-model"]
        == pinned[f"{bot.name}-model"]
        == "corp/llama@sha256:" + ("0" * 64)
    )


def test_every_image_can_be_overridden_in_the_spec() -> None:
    bot = with_spec(
        example("vllm-gpu-slack-kb"),
        {
            "model": {"image": "corp/vllm:1"},
            "gateway": {"image": "corp/tertulia:1", "memory": {"image": "corp/redis:1"}},
            "knowledgeBase": {"image": "corp/weaviate:1", "embedding": {"image": "corp/llama:1"}},
        },
    )
    found = {
        name: pod["containers"][0]["image"]
        for name, pod in pods(render_all(bot, image=IMAGE)).items()
    }
    assert found["harbour-model"] == "corp/vllm:1"
    assert found["harbour-gateway"] == "corp/tertulia:1"
    assert found["harbour-memory"] == "corp/redis:1"
    assert found["harbour-knowledge-base"] == "corp/weaviate:1"
    assert found["harbour-embeddings"] == "corp/llama:1"


def test_pull_secrets_and_priority_reach_every_pod_and_the_model_may_differ() -> None:
    bot = with_spec(
        example("all-platforms"),
        {
            "imagePullSecrets": [{"name": "mirror-credentials"}],
            "priorityClassName": "chat",
            "model": {"priorityClassName": "gpu-inference", "runtimeClassName": "nvidia"},
            "knowledgeBase": {"enabled": True, "sources": [{"configMap": {"name": "docs"}}]},
        },
    )
    assert bot.spec.image_pull_secrets == [SecretRef(name="mirror-credentials")]
    found = pods(render_all(bot, image=IMAGE))
    assert len(found) >= 8  # model, memory, gateway, embeddings, Weaviate, ingest, 3 bots
    for name, pod in found.items():
        assert pod["imagePullSecrets"] == [{"name": "mirror-credentials"}], name
        expected = "gpu-inference" if name == "tertulia-model" else "chat"
        assert pod["priorityClassName"] == expected, name
        assert ("runtimeClassName" in pod) == (name == "tertulia-model"), name
    assert found["tertulia-model"]["runtimeClassName"] == "nvidia"


def test_resources_are_settable_for_every_component() -> None:
    sized = {"requests": {"cpu": "3", "memory": "3Gi"}, "limits": {"memory": "5Gi"}}
    bot = with_spec(
        example("all-platforms"),
        {
            "gateway": {"resources": sized, "memory": {"resources": sized}},
            "knowledgeBase": {
                "enabled": True,
                "resources": sized,
                "embedding": {"resources": sized},
            },
            "platforms": {
                "slack": {"resources": sized},
                "discord": {"resources": sized},
                "telegram": {"resources": sized},
            },
        },
    )
    found = pods(render_all(bot, image=IMAGE))
    for name in (
        "tertulia-gateway",
        "tertulia-memory",
        "tertulia-knowledge-base",
        "tertulia-embeddings",
        "tertulia-slack",
        "tertulia-discord",
        "tertulia-telegram",
    ):
        assert found[name]["containers"][0]["resources"] == sized, name
    defaults = pods(render_all(example("all-platforms"), image=IMAGE))
    assert defaults["tertulia-gateway"]["containers"][0]["resources"] != sized


def test_scrapers_reach_the_metrics_of_the_components_behind_a_policy() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    bot = with_spec(example("all-platforms"), {"knowledgeBase": {"enabled": True}})
    manifests = by_ref(render_all(bot, image=IMAGE, installation=Installation(scrapers=monitoring)))
    for policy in ("tertulia-model-ingress", "tertulia-embeddings-ingress"):
        rules = manifests["NetworkPolicy", policy]["spec"]["ingress"]
        assert {"from": [monitoring], "ports": [{"port": "http", "protocol": "TCP"}]} in rules
    for policy in ("tertulia-memory-ingress", "tertulia-knowledge-base-ingress"):
        rules = manifests["NetworkPolicy", policy]["spec"]["ingress"]
        assert all(monitoring not in rule["from"] for rule in rules), policy
    # Ollama serves no metrics: nothing to let in.
    ollama = by_ref(
        render_all(
            example("cpu-ollama"), image=IMAGE, installation=Installation(scrapers=monitoring)
        )
    )
    assert len(ollama["NetworkPolicy", "helpdesk-model-ingress"]["spec"]["ingress"]) == 1
    # Without scrapers, only the clients.
    plain = by_ref(render_all(bot, image=IMAGE))
    assert len(plain["NetworkPolicy", "tertulia-model-ingress"]["spec"]["ingress"]) == 1


NGINX = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}


def test_the_gateways_api_is_for_its_bots_the_ingress_controllers_and_its_named_clients() -> None:
    app = {"podSelector": {"matchLabels": {"app": "shop"}}}
    bot = with_spec(example("all-platforms"), {"gateway": {"allowedClients": [app]}})
    installation = Installation(scrapers=MONITORING, gateway_clients=[NGINX])
    policy = by_ref(render_all(bot, image=IMAGE, installation=installation))[
        "NetworkPolicy", "tertulia-gateway-ingress"
    ]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    api, metrics = policy["ingress"]
    selected = [peer["podSelector"]["matchLabels"] for peer in api["from"] if "podSelector" in peer]
    bots = [labels["app.kubernetes.io/component"] for labels in selected if "app" not in labels]
    assert sorted(bots) == ["discord", "slack", "telegram"]
    assert NGINX in api["from"] and app in api["from"]
    assert api["ports"] == [{"port": "http", "protocol": "TCP"}]
    # The metrics port for the scrapers alone, and nothing else for them.
    assert metrics == {"from": [MONITORING], "ports": [{"port": "metrics", "protocol": "TCP"}]}


def test_nothing_reaches_a_bot_but_the_platforms_webhook_calls_and_the_scrapers() -> None:
    manifests = by_ref(
        render_all(
            example("all-platforms"), image=IMAGE, installation=Installation(scrapers=MONITORING)
        )
    )
    # Slack in events mode and Telegram with a webhook: the platform calls their webhook port.
    for platform in ("slack", "telegram"):
        rules = manifests["NetworkPolicy", f"tertulia-{platform}-ingress"]["spec"]["ingress"]
        assert {"ports": [{"port": 8443, "protocol": "TCP"}]} in rules
    # Discord connects out: nothing but the scrapers on its health port.
    discord = manifests["NetworkPolicy", "tertulia-discord-ingress"]["spec"]
    assert discord["policyTypes"] == ["Ingress"]
    assert discord["ingress"] == [
        {"from": [MONITORING], "ports": [{"port": 8081, "protocol": "TCP"}]}
    ]
    # Without scrapers: no ingress at all (a policy of the Ingress type with no rules).
    plain = by_ref(render_all(example("all-platforms"), image=IMAGE))
    spec = plain["NetworkPolicy", "tertulia-discord-ingress"]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert "ingress" not in spec


def test_restricted_egress_lets_each_component_open_only_what_it_needs() -> None:
    bot = with_spec(example("all-platforms"), {"knowledgeBase": {"enabled": True}})
    open_ = by_ref(render_all(bot, image=IMAGE))
    assert not [ref for ref in open_ if ref[1].endswith("-egress")]
    manifests = by_ref(render_all(bot, image=IMAGE, installation=Installation(egress="restricted")))

    def reachable(component: str) -> list[str]:
        rules = manifests["NetworkPolicy", f"tertulia-{component}-egress"]["spec"]["egress"]
        return sorted(
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in rules
            for peer in rule.get("to") or []
            if "podSelector" in peer
        )

    assert reachable("gateway") == ["embeddings", "knowledge-base", "memory", "model"]
    for platform in ("slack", "discord", "telegram"):
        assert reachable(platform) == ["gateway"]
        rules = manifests["NetworkPolicy", f"tertulia-{platform}-egress"]["spec"]["egress"]
        internet = [
            rule for rule in rules if any("ipBlock" in peer for peer in rule.get("to") or [])
        ]
        (https,) = internet
        assert https["ports"] == [{"port": 443, "protocol": "TCP"}]
        assert "10.0.0.0/8" in https["to"][0]["ipBlock"]["except"]
    assert reachable("ingest") == ["embeddings", "knowledge-base"]
    assert reachable("memory") == [] and reachable("knowledge-base") == []
    # Every one may ask DNS.
    for ref, manifest in manifests.items():
        if ref[0] == "NetworkPolicy" and ref[1].endswith("-egress"):
            dns = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
            assert dns in manifest["spec"]["egress"], ref
