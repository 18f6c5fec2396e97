"""The model server as each engine's upstream expects it, and scaling with a weights cache."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tertulia.knowledge.settings import KnowledgeSettings
from tertulia.operator.api import CacheSpec, ChatBot, ModelToolsSpec
from tertulia.operator.render import render_all
from tertulia.operator.render.model import CHUNK_TOKENS, SERVER_KEY_PATH
from tests.unit.operator.test_render import IMAGE, by_ref, example, with_spec


def with_model(bot: ChatBot, **changes: Any) -> ChatBot:
    model = bot.spec.model.model_copy(update=changes)
    return bot.model_copy(update={"spec": bot.spec.model_copy(update={"model": model})})


def model_workload(bot: ChatBot) -> dict[str, Any]:
    (found,) = [
        manifest
        for manifest in render_all(bot, image=IMAGE)
        if manifest["kind"] in ("Deployment", "StatefulSet")
        and manifest["metadata"]["name"] == bot.child("model")
    ]
    return found


def model_container(bot: ChatBot) -> dict[str, Any]:
    container: dict[str, Any] = model_workload(bot)["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container["env"]}


# vLLM


def test_vllm_is_started_as_vllm_serve_with_the_model_as_its_positional_argument() -> None:
    container = model_container(example("vllm-gpu-slack-kb"))
    args = container["args"]
    # The command is set, not the image's entrypoint (which changed between releases), as
    # vLLM's production-stack chart sets it: `vllm serve MODEL ...`, never --model.
    assert container["command"] == ["vllm", "serve"]
    assert args[0] == "Qwen/Qwen2.5-7B-Instruct"
    assert "--model" not in args
    assert args[args.index("--served-model-name") + 1] == "Qwen/Qwen2.5-7B-Instruct"


def test_vllm_keeps_its_compile_cache_and_weights_on_the_cache_volume() -> None:
    container = model_container(example("vllm-gpu-slack-kb"))
    (cache,) = [mount for mount in container["volumeMounts"] if mount["name"] == "cache"]
    env = env_of(container)
    assert env["VLLM_CACHE_ROOT"].startswith(cache["mountPath"] + "/")
    assert env["HF_HOME"].startswith(cache["mountPath"] + "/")


def test_context_length_and_gpu_memory_reach_vllm() -> None:
    bot = with_model(example("vllm-gpu-slack-kb"), gpu_memory_utilization=0.85)
    args = model_container(bot)["args"]
    assert args[args.index("--max-model-len") + 1] == "32768"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.85"
    unset = model_container(with_model(bot, max_model_len=None, gpu_memory_utilization=None))
    assert "--max-model-len" not in unset["args"]
    assert "--gpu-memory-utilization" not in unset["args"]


@pytest.mark.parametrize("name", ["vllm-gpu-slack-kb", "all-platforms"])
def test_a_busy_server_is_not_restarted_for_one_slow_answer(name: str) -> None:
    container = model_container(example(name))
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["timeoutSeconds"] >= 5 and readiness["timeoutSeconds"] >= 5
    # A restart reloads the weights: only minutes of silence justify it.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120


def test_the_startup_allowance_is_the_specs() -> None:
    bot = with_model(example("vllm-gpu-slack-kb"), startup_timeout_seconds=7200)
    probe = model_container(bot)["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 7200
    default = model_container(example("vllm-gpu-slack-kb"))["startupProbe"]
    assert default["periodSeconds"] * default["failureThreshold"] == 3600


# Ollama


def test_ollama_serve_is_pid_1_so_sigterm_stops_it() -> None:
    container = model_container(example("cpu-ollama"))
    assert "command" not in container  # the image's entrypoint, /bin/ollama
    assert container["args"] == ["serve"]


def test_ollama_pulls_only_what_its_cache_lacks_then_warms_the_model() -> None:
    probe = model_container(example("cpu-ollama"))["startupProbe"]
    shell, flag, script, zeroth, model = probe["exec"]["command"]
    assert (shell, flag, zeroth, model) == ("/bin/sh", "-c", "prepare", "llama3.2:3b")
    # The registry is asked only when `ollama show` finds nothing in the cache.
    assert script.index("ollama show") < script.index("|| ollama pull") < script.index("ollama run")
    # The name reaches the script as $1, never spliced into it.
    assert "llama3.2" not in script
    # One run, until the model is loaded: the kubelet stops it at the allowance, and the
    # first failure restarts the container, so the allowance bounds the whole start.
    assert probe["timeoutSeconds"] == 3600
    assert probe["failureThreshold"] == 1


def test_ollamas_startup_probe_waits_for_the_server_and_a_pull_that_fails_then_loads(
    tmp_path: Path,
) -> None:
    """The probe's script under /bin/sh, with an `ollama` that answers nothing twice (its
    server is not up yet), then lacks the model, then fails one pull (a registry's moment):
    the script tries again, pulls, loads the model, and succeeds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "ollama").write_text(
        f"""#!/bin/sh
echo "$*" >> {calls}
n=$(wc -l < {calls})
case "$1" in
  show) exit 1 ;;
  pull) [ "$n" -ge 6 ] && exit 0 || exit 1 ;;
  run) exit 0 ;;
esac
"""
    )
    (bin_dir / "sleep").write_text(f"#!/bin/sh\necho sleep $1 >> {calls}.sleeps\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    probe = model_container(example("cpu-ollama"))["startupProbe"]
    result = subprocess.run(
        probe["exec"]["command"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        "show llama3.2:3b", "pull llama3.2:3b",  # no server yet
        "show llama3.2:3b", "pull llama3.2:3b",  # a pull that failed
        "show llama3.2:3b", "pull llama3.2:3b",
        "run llama3.2:3b hi",
    ]  # fmt: skip
    assert Path(f"{calls}.sleeps").read_text().splitlines() == ["sleep 5", "sleep 5"]


@pytest.mark.parametrize(
    ("autoscaling", "env", "parallel"),
    [
        (None, [], "4"),  # the autoscaler's default target
        ({"targetInFlight": 8}, [], "8"),
        ({"targetInFlight": 8}, [{"name": "OLLAMA_NUM_PARALLEL", "value": "2"}], "2"),
    ],
)
def test_ollama_serves_as_many_at_once_as_the_gateway_sends_it(
    autoscaling: dict[str, Any] | None, env: list[dict[str, str]], parallel: str
) -> None:
    """Ollama serves one request at a time unless told (envconfig's OLLAMA_NUM_PARALLEL, 1);
    a variable the spec sets is its own, once."""
    bot = with_spec(
        example("cpu-ollama"),
        {"model": {"env": env, **({"autoscaling": autoscaling} if autoscaling else {})}},
    )
    container = model_container(bot)
    names = [item["name"] for item in container["env"]]
    assert len(names) == len(set(names))
    assert env_of(container)["OLLAMA_NUM_PARALLEL"] == parallel


def test_ollamas_context_holds_the_history_the_passages_and_the_answer() -> None:
    """Ollama's default context (4096 or less) cuts a longer prompt from the front, silently."""
    assert KnowledgeSettings.model_fields["chunk_tokens"].default == CHUNK_TOKENS
    bot = example("cpu-ollama")
    gateway = bot.spec.gateway
    context = int(env_of(model_container(bot))["OLLAMA_CONTEXT_LENGTH"])
    needed = gateway.memory.max_tokens + gateway.max_tokens + len(gateway.system_prompt) // 4
    assert context % 1024 == 0 and context >= needed
    with_knowledge = with_spec(bot, {"knowledgeBase": {"enabled": True, "topK": 8}})
    longer = int(env_of(model_container(with_knowledge))["OLLAMA_CONTEXT_LENGTH"])
    assert longer % 1024 == 0 and longer >= needed + 8 * CHUNK_TOKENS


def test_ollama_keeps_the_model_loaded_and_takes_the_context_length() -> None:
    bot = with_model(example("cpu-ollama"), max_model_len=16384)
    env = env_of(model_container(bot))
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert env["OLLAMA_CONTEXT_LENGTH"] == "16384"
    assert env["OLLAMA_MODELS"].startswith("/cache/")


# llama.cpp


def test_llamacpp_context_is_the_specs_or_8192() -> None:
    bot = example("all-platforms")
    args = model_container(bot)["args"]
    assert args[args.index("--ctx-size") + 1] == "8192"
    args = model_container(with_model(bot, max_model_len=32768))["args"]
    assert args[args.index("--ctx-size") + 1] == "32768"


@pytest.mark.parametrize(
    ("resources", "args", "threads"),
    [
        (None, [], "1"),  # the default request, 1 CPU
        ({"requests": {"cpu": "3"}}, [], "3"),
        ({"requests": {"cpu": "500m"}}, [], "1"),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "2500m"}}, [], "3"),  # the limit first
        ({"requests": {"cpu": "4"}}, ["--threads", "6"], "6"),  # the spec's own, once
    ],
)
def test_llamacpp_takes_the_threads_its_container_may_use(
    resources: dict[str, Any] | None, args: list[str], threads: str
) -> None:
    assert _llamacpp_flag("--threads", resources, args) == [threads]


def _llamacpp_flag(flag: str, resources: dict[str, Any] | None, args: list[str]) -> list[str]:
    """Each value llama.cpp's `flag` is given with these resources and spec args."""
    bot = with_model(example("all-platforms"), resources=resources, args=args)
    rendered: list[str] = model_container(bot)["args"]
    return [rendered[at + 1] for at, arg in enumerate(rendered) if arg == flag]


@pytest.mark.parametrize(
    ("resources", "args", "cache"),
    [
        (None, [], "1024"),  # a quarter of the default request, 4 GiB
        ({"requests": {"memory": "2Gi"}, "limits": {"memory": "6Gi"}}, [], "1536"),  # the limit
        ({"requests": {"memory": "512Mi"}}, [], "128"),
        ({"limits": {"memory": "64Gi"}}, [], "8192"),  # never over llama.cpp's own default
        ({"requests": {"memory": "8Gi"}}, ["--cache-ram", "0"], "0"),  # the spec's own, once
    ],
)
def test_llamacpp_keeps_its_prompt_cache_within_the_containers_memory(
    resources: dict[str, Any] | None, args: list[str], cache: str
) -> None:
    """llama.cpp's host prompt cache takes 8 GiB by default, whatever the pod asked for."""
    assert _llamacpp_flag("--cache-ram", resources, args) == [cache]


@pytest.mark.parametrize(
    ("example_name", "max_tokens", "drain"),
    [
        # vLLM drains itself on SIGTERM (--shutdown-timeout): 20 tokens a second at the least,
        # 30 s at the least.
        ("vllm-gpu-slack-kb", 512, 30),
        ("vllm-gpu-slack-kb", 4096, 205),
        # llama.cpp on CPUs: 5 tokens a second.
        ("all-platforms", 512, 103),
        # Ollama, waited for until no client is connected: the same pace.
        ("cpu-ollama", 512, 103),
    ],
)
def test_a_deleted_model_pod_finishes_its_answers_within_a_grace_sized_from_max_tokens(
    example_name: str, max_tokens: int, drain: int
) -> None:
    bot = with_spec(example(example_name), {"gateway": {"maxTokens": max_tokens}})
    pod = model_workload(bot)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    stop = container["lifecycle"]["preStop"]
    # Serving on while the DNS forgets the pod (CoreDNS's 5 s TTL plus the gateway's 2 s
    # lookup), then the drain, then a margin for the engine to exit.
    assert pod["terminationGracePeriodSeconds"] == 15 + drain + 15
    args = container.get("args", [])
    if example_name == "vllm-gpu-slack-kb":
        assert stop == {"sleep": {"seconds": 15}}
        assert args[args.index("--shutdown-timeout") + 1] == str(drain)
    else:
        script = stop["exec"]["command"][2]
        assert "STOP_DELAY=15\n" in script and f"DRAIN_SECONDS={drain}\n" in script
        assert "--shutdown-timeout" not in args


@pytest.mark.parametrize("given", [["--shutdown-timeout", "900"], ["--shutdown-timeout=900"]])
def test_a_vllm_shutdown_timeout_from_the_spec_is_the_drain_the_grace_period_waits_for(
    given: list[str],
) -> None:
    bot = with_spec(example("vllm-gpu-slack-kb"), {"model": {"args": given}})
    pod = model_workload(bot)["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    # The spec's own value, once, and a grace period that outlasts it.
    assert sum(arg.startswith("--shutdown-timeout") for arg in args) == 1
    assert pod["terminationGracePeriodSeconds"] == 15 + 900 + 15


def drain_script(
    tmp_path: Path, bot: ChatBot, busy: list[str], key: str = ""
) -> tuple[list[str], list[str]]:
    """Run llama.cpp's preStop with a curl that answers /metrics with each of `busy` (the
    requests processing) in turn, then fails as a stopped server does, and a sleep that only
    notes it was asked; returns what curl and sleep were asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    calls, answers = tmp_path / "calls", tmp_path / "answers"
    answers.write_text("".join(f"{n}\n" for n in busy))
    (bin_dir / "curl").write_text(
        f"""#!/bin/sh
echo "curl $*" >> {calls}
n="$(head -n 1 {answers})"
[ -n "$n" ] || exit 7
sed -i 1d {answers}
printf '# HELP llamacpp:requests_processing Number of requests processing.\\n'
printf 'llamacpp:requests_processing %s\\nllamacpp:requests_deferred 0\\n' "$n"
"""
    )
    (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "sleep $*" >> {calls}\n')
    for tool in ("curl", "sleep"):
        (bin_dir / tool).chmod(0o755)
    command = list(model_container(bot)["lifecycle"]["preStop"]["exec"]["command"])
    if key:
        # The mounted key's file, here a file of the test's.
        (tmp_path / "key").write_text(key)
        mounted = f"KEY_FILE={SERVER_KEY_PATH}-model/model\n"
        assert mounted in command[2]
        command[2] = command[2].replace(mounted, f"KEY_FILE={tmp_path / 'key'}\n")
    subprocess.run(command, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True, timeout=60)
    said = calls.read_text().splitlines()
    return [c for c in said if c.startswith("curl")], [c for c in said if c.startswith("sleep")]


def test_a_stopping_llamacpp_pod_waits_for_its_answers_in_flight_then_stops(
    tmp_path: Path,
) -> None:
    bot = example("all-platforms")
    asked, slept = drain_script(tmp_path, bot, ["2", "1", "0"])
    assert len(asked) == 3
    assert asked[0].endswith("http://127.0.0.1:8080/metrics")
    assert slept == ["sleep 15", "sleep 1", "sleep 1"]
    # A server already gone has nothing left to finish.
    asked, slept = drain_script(tmp_path / "gone", bot, [])
    assert (len(asked), slept) == (1, ["sleep 15"])


def test_a_llamacpp_pod_stuck_busy_stops_at_its_drain_and_asks_with_its_key(
    tmp_path: Path,
) -> None:
    bot = with_spec(example("all-platforms"), {"gateway": {"maxTokens": 10}})
    bot = with_model(bot, require_api_key=True)
    asked, slept = drain_script(tmp_path, bot, ["1"] * 100, key="s3cret")
    assert len(asked) == 30 and slept.count("sleep 1") == 30  # the 30 s floor
    # /metrics asks for the generated key too.
    assert all("Authorization: Bearer s3cret" in call for call in asked)


# /proc/net/tcp as the kernel writes it: the header, then one socket a line (local address,
# remote address, state in hex: 01 ESTABLISHED, 06 TIME_WAIT, 0A LISTEN).
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"


def tcp_line(local_port: int, state: str, slot: int = 0) -> str:
    return (
        f"   {slot}: 0A2A0105:{local_port:04X} 0A2A0107:D2F0 {state} 00000000:00000000 "
        "00:00000000 00000000 65532\n"
    )


def ollama_drain_script(tmp_path: Path, bot: ChatBot, tables: list[str]) -> list[str]:
    """Run Ollama's preStop where /proc/net/tcp reads as each of `tables` in turn (tcp6
    empty), with a sleep that only notes it was asked; returns the sleeps."""
    bin_dir, proc_net = tmp_path / "bin", tmp_path / "net"
    bin_dir.mkdir(parents=True)
    proc_net.mkdir()
    calls, queue = tmp_path / "calls", tmp_path / "queue"
    queue.mkdir()
    for index, table in enumerate(tables):
        (queue / f"{index:03}").write_text(TCP_HEADER + table)
    (proc_net / "tcp6").write_text(TCP_HEADER)
    # Each pause moves the next table into place, as time passes for the kernel's.
    (bin_dir / "sleep").write_text(
        f"""#!/bin/sh
echo "sleep $*" >> {calls}
next="$(ls {queue} | head -n 1)"
[ -n "$next" ] && mv "{queue}/$next" {proc_net}/tcp
exit 0
"""
    )
    (bin_dir / "sleep").chmod(0o755)
    command = list(model_container(bot)["lifecycle"]["preStop"]["exec"]["command"])
    assert "PROC_NET=/proc/net\n" in command[2]
    command[2] = command[2].replace("PROC_NET=/proc/net\n", f"PROC_NET={proc_net}\n")
    subprocess.run(command, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True, timeout=60)
    return calls.read_text().splitlines()


def test_a_stopping_ollama_pod_waits_until_no_client_is_connected(tmp_path: Path) -> None:
    bot = example("cpu-ollama")
    busy = tcp_line(11434, "01") + tcp_line(11434, "01", 1)
    # Its listener, a probe's closed connection, the server's own link to its runner.
    idle = tcp_line(11434, "0A") + tcp_line(11434, "06", 1) + tcp_line(40000, "01", 2)
    # The first table is read after the 15 s of serving on: two answers, one, none.
    slept = ollama_drain_script(tmp_path, bot, [busy, tcp_line(11434, "01"), idle])
    assert slept == ["sleep 15", "sleep 1", "sleep 1"]
    # Nobody connected when the delay ends: it stops then.
    assert ollama_drain_script(tmp_path / "idle", bot, [idle]) == ["sleep 15"]


def test_an_ollama_pod_whose_client_never_leaves_stops_at_its_drain(tmp_path: Path) -> None:
    bot = with_spec(example("cpu-ollama"), {"gateway": {"maxTokens": 10}})
    slept = ollama_drain_script(tmp_path, bot, [tcp_line(11434, "01")] * 40)
    assert slept == ["sleep 15"] + ["sleep 1"] * 30  # the 30 s floor


# Tool calling


def gateway_backend(bot: ChatBot) -> dict[str, Any]:
    (config,) = [
        m
        for m in render_all(bot, image=IMAGE)
        if m["metadata"]["name"] == bot.child("gateway") and m["kind"] == "ConfigMap"
    ]
    backend: dict[str, Any] = yaml.safe_load(config["data"]["gateway.yaml"])["backend"]
    return backend


def test_tools_off_leave_every_engine_and_the_gateway_as_they_were() -> None:
    for name in ("vllm-gpu-slack-kb", "all-platforms", "cpu-ollama"):
        bot = example(name)
        args = model_container(bot).get("args", [])
        assert not {"--jinja", "--enable-auto-tool-choice", "--tool-call-parser"} & set(args)
        assert "tools" not in gateway_backend(bot)


def test_vllm_calls_tools_with_auto_choice_and_the_models_parser() -> None:
    bot = with_model(
        example("vllm-gpu-slack-kb"), tools=ModelToolsSpec(enabled=True, parser="hermes")
    )
    args = model_container(bot)["args"]
    # Both, or vLLM refuses tool_choice "auto" (the OpenAI SDK's default with tools).
    assert "--enable-auto-tool-choice" in args
    assert args[args.index("--tool-call-parser") + 1] == "hermes"
    assert gateway_backend(bot)["tools"] is True


def test_vllm_tool_flags_in_args_are_the_users_alone() -> None:
    bot = with_model(
        example("vllm-gpu-slack-kb"),
        tools=ModelToolsSpec(enabled=True, parser="hermes"),
        args=["--enable-auto-tool-choice", "--tool-call-parser=llama3_json"],
    )
    args = model_container(bot)["args"]
    assert args.count("--enable-auto-tool-choice") == 1
    assert "--tool-call-parser" not in args
    assert "--tool-call-parser=llama3_json" in args


def test_llamacpp_calls_tools_through_its_jinja_templates() -> None:
    bot = with_model(example("all-platforms"), tools=ModelToolsSpec(enabled=True))
    args = model_container(bot)["args"]
    assert args.count("--jinja") == 1
    assert gateway_backend(bot)["tools"] is True
    # A user's --no-jinja comes after it, and wins (llama.cpp: the last flag counts).
    user = with_model(bot, args=["--no-jinja"])
    assert model_container(user)["args"][-1] == "--no-jinja"


def test_ollama_calls_tools_with_no_flag_and_the_gateway_lets_it() -> None:
    ollama = with_model(example("cpu-ollama"), tools=ModelToolsSpec(enabled=True))
    assert "--jinja" not in str(model_container(ollama))
    assert gateway_backend(ollama)["tools"] is True


# Scaling with a cache


def test_without_a_cache_replicas_share_nothing_and_roll() -> None:
    bot = with_model(example("cpu-ollama"), cache=None, replicas=3)
    workload = model_workload(bot)
    assert workload["kind"] == "Deployment"
    assert workload["spec"]["replicas"] == 3
    assert "strategy" not in workload["spec"]
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    assert {"name": "cache", "emptyDir": {"sizeLimit": "50Gi"}} in volumes


def test_a_read_write_once_cache_gives_each_replica_a_claim_of_its_own() -> None:
    bot = with_model(example("cpu-ollama"), replicas=3)
    manifests = render_all(bot, image=IMAGE)
    workload = model_workload(bot)
    assert workload["kind"] == "StatefulSet"
    assert workload["spec"]["replicas"] == 3
    (template,) = workload["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "cache"
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert template["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # No claim that several replicas on different nodes would fight over.
    assert not [m for m in manifests if m["kind"] == "PersistentVolumeClaim"]
    pod = workload["spec"]["template"]["spec"]
    assert all(volume["name"] != "cache" for volume in pod.get("volumes", []))
    # Replicas start together; a replica scaled away keeps its weights for its return.
    assert workload["spec"]["podManagementPolicy"] == "Parallel"
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete",
        "whenScaled": "Retain",
    }


def test_a_read_write_many_cache_is_one_claim_every_replica_mounts() -> None:
    bot = with_model(
        example("cpu-ollama"),
        replicas=3,
        cache=CacheSpec(size="10Gi", access_mode="ReadWriteMany", storage_class_name="nfs"),
    )
    manifests = by_ref(render_all(bot, image=IMAGE))
    claim = manifests["PersistentVolumeClaim", "helpdesk-model-cache"]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"]
    assert claim["storageClassName"] == "nfs"
    workload = manifests["Deployment", "helpdesk-model"]
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "helpdesk-model-cache"}} in (
        volumes
    )


def test_per_replica_claims_hold_the_llamacpp_download_and_its_fetcher_can_write_them() -> None:
    workload = model_workload(example("all-platforms"))
    pod = workload["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert {"name": "cache", "mountPath": "/models"} in fetch["volumeMounts"]
    assert pod["securityContext"]["fsGroup"] == 10001


def test_a_downloaded_model_is_checked_against_its_pin_and_capped_at_its_volume() -> None:
    bot = with_spec(
        example("cpu-ollama"),
        {
            "model": {
                "engine": "llamacpp",
                "name": None,
                "source": "hf://owner/repo/model.gguf",
                "sha256": "a" * 64,
                "cache": {"size": "20Gi"},
            }
        },
    )
    model = next(m for m in render_all(bot, image=IMAGE) if m["kind"] == "StatefulSet")
    fetch = model["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["args"][-4:] == ["--max-size", "20Gi", "--sha256", "a" * 64]


def test_the_servers_keys_go_to_the_servers_and_to_those_who_call_them() -> None:
    bot = with_spec(
        example("cpu-ollama"),
        {
            "model": {
                "engine": "llamacpp",
                "name": None,
                "source": "hf://owner/repo/model.gguf",
                "requireApiKey": True,
            },
            "knowledgeBase": {
                "enabled": True,
                "embedding": {"requireApiKey": True},
                "sources": [{"configMap": {"name": "faq"}}],
            },
        },
    )
    manifests = by_ref(render_all(bot, image=IMAGE, source_digests={"faq": "0123abcd"}))
    model = manifests["StatefulSet", "helpdesk-model"]["spec"]["template"]["spec"]
    server = model["containers"][0]
    key_file = server["args"][server["args"].index("--api-key-file") + 1]
    assert key_file == "/etc/tertulia/server-key-model/model"
    assert {"name": "model-key", "secret": {"secretName": "helpdesk-server-keys",
            "items": [{"key": "model", "path": "model"}]}} in model["volumes"]  # fmt: skip
    embeddings = manifests["Deployment", "helpdesk-embeddings"]["spec"]["template"]["spec"]
    assert "/etc/tertulia/server-key-embeddings/embeddings" in embeddings["containers"][0]["args"]
    # The gateway sends both keys; the ingest Job the embeddings' one.
    config = yaml.safe_load(manifests["ConfigMap", "helpdesk-gateway"]["data"]["gateway.yaml"])
    assert config["backend"]["api_key_file"] == key_file
    assert config["knowledge_base"]["embedding"]["api_key_file"] == (
        "/etc/tertulia/server-key-embeddings/embeddings"
    )
    gateway = manifests["Deployment", "helpdesk-gateway"]["spec"]["template"]["spec"]
    mounted = {m["mountPath"] for m in gateway["containers"][0]["volumeMounts"]}
    assert {"/etc/tertulia/server-key-model", "/etc/tertulia/server-key-embeddings"} <= mounted
    ingest = next(m for ref, m in manifests.items() if ref[0] == "Job")
    ingest_mounts = ingest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert "/etc/tertulia/server-key-embeddings" in {m["mountPath"] for m in ingest_mounts}
    # llama.cpp asks the key on /metrics too: neither is offered to the scrapers.
    assert (
        "tertulia.dev/metrics" not in manifests["Service", "helpdesk-model"]["metadata"]["labels"]
    )
    assert (
        "tertulia.dev/metrics"
        not in manifests["Service", "helpdesk-embeddings"]["metadata"]["labels"]
    )


def test_vllm_reads_its_key_from_the_environment_and_keeps_its_metrics_open() -> None:
    bot = with_spec(example("vllm-gpu-slack-kb"), {"model": {"requireApiKey": True}})
    manifests = by_ref(render_all(bot, image=IMAGE))
    workload = next(
        m
        for ref, m in manifests.items()
        if ref[1].endswith("-model") and ref[0] in ("Deployment", "StatefulSet")
    )
    env = workload["spec"]["template"]["spec"]["containers"][0]["env"]
    key = next(item for item in env if item["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["key"] == "model"
    service = next(
        m for ref, m in manifests.items() if ref[0] == "Service" and ref[1].endswith("-model")
    )
    assert service["metadata"]["labels"]["tertulia.dev/metrics"] == "prometheus"
