"""docker-compose.yml and deploy/ cannot run here (no Docker engine): check they name only
services and commands the CLI has."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from rollguard_shell.cli import build_parser
from rollguard_shell.runner import SERVICES

ROOT = Path(__file__).resolve().parents[1]


def rollguard_argv(spec: dict[str, object]) -> list[str]:
    """The rollguard arguments of a compose service; a shell command is searched for them."""
    command = spec["command"]
    assert isinstance(command, list)
    if spec.get("entrypoint") is None:
        return command
    words = shlex.split(command[-1])
    return words[words.index("rollguard") + 1 :]


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
        args = build_parser().parse_args(
            rollguard_argv(spec)
        )  # raises SystemExit on anything the CLI lacks
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
