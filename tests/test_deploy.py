"""docker-compose.yml and deploy/ cannot run here (no Docker engine): check they name only
services and commands the CLI has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from rollguard_shell.cli import build_parser
from rollguard_shell.runner import SERVICES

ROOT = Path(__file__).resolve().parents[1]


def rollguard_argvs(spec: dict[str, object]) -> list[list[str]]:
    """The rollguard arguments of a compose service: its command, or each rollguard
    invocation in its shell command (split at ``;``, ``||`` and ``&&``)."""
    command = spec["command"]
    assert isinstance(command, list)
    if spec.get("entrypoint") is None:
        return [command]
    out = []
    for part in re.split(r";|\|\||&&", command[-1]):
        words = shlex.split(part)
        if "rollguard" in words:
            out.append(words[words.index("rollguard") + 1 :])
    assert out, f"no rollguard command in {command[-1]!r}"
    return out


def compose_services() -> dict[str, dict[str, object]]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {
        name: spec
        for name, spec in doc["services"].items()
        if spec.get("image", "").startswith("rollguard")
    }


def test_compose_runs_every_service_and_each_is_a_cli_entry_point() -> None:
    services = compose_services()
    ran = set()
    for name, spec in services.items():
        for argv in rollguard_argvs(spec):
            args = build_parser().parse_args(argv)  # SystemExit on anything the CLI lacks
            if args.command == "run":
                assert args.service == name, f"compose service {name} runs {args.service}"
                ran.add(args.service)
    assert ran == set(SERVICES)


def test_compose_services_share_the_kafka_and_database_settings() -> None:
    for name, spec in compose_services().items():
        env = spec["environment"]
        assert env["ROLLGUARD_KAFKA_BOOTSTRAP"] == "kafka:9092", name  # type: ignore[index]
        assert env["ROLLGUARD_LEDGER_URL"].startswith("postgresql+psycopg://"), name  # type: ignore[index]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")), ids=lambda p: p.name
)
def test_kubernetes_manifests_run_known_commands(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None or doc.get("kind") not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            args = build_parser().parse_args(container.get("args") or container["command"][1:])
            if args.command == "run":
                assert args.service in SERVICES
                assert doc["metadata"]["name"].endswith(args.service)


def test_every_kubernetes_service_mounts_the_trusted_keys_and_only_its_own_private_key() -> None:
    """Every service checks who signed what it reads (issue 13): the trusted public keys where
    ROLLGUARD_TRUSTED_KEYS_DIR points; a signing service its own private key and no other."""
    env = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())["data"]
    own = {"decider": "signing.pem", "detector": "detector.pem", "executor": "executor.pem"}
    for name in ("decider", "detector", "executor", "router", "notifier", "ledger"):
        doc = yaml.safe_load((ROOT / "deploy" / "kubernetes" / f"{name}.yaml").read_text())
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        trusted = volumes[mounts[env["ROLLGUARD_TRUSTED_KEYS_DIR"]]]
        assert trusted["secret"]["secretName"] == "rollguard-trusted-keys", name
        keys = [
            v for v in volumes.values() if v.get("secret", {}).get("secretName") == "rollguard-keys"
        ]
        items = [i["key"] for v in keys for i in v["secret"].get("items", [])]
        assert items == ([own[name]] if name in own else []), (name, items)
        if name in own:
            assert mounts[env["ROLLGUARD_KEYS_DIR"]] == keys[0]["name"], name
