"""Least privilege on Kafka (issue 13, part 3): the grants of shell/access.py, shown in
docs/security.md, applied by deploy/kafka/acls.sh and given to each container by the compose
and Kubernetes manifests, hold against what each service really does.

The embedded broker enforces no ACLs, so the test reads the wire instead: every Kafka request
of a whole demo (router, detector, decider, executor, ledger, notifier, each with its own
client id) and of the CLI commands people and CI run goes through a relay that decodes it
(tests/relay.py), and each client's Produce, Fetch, ListOffsets, group and CreateTopics
requests must fall inside its principal's row. A service that started reading or writing a
topic its row lacks would fail here before it failed on a locked-down Kafka."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from rollguard.broker import EmbeddedBroker, free_port
from rollguard_shell.access import acl_script, grant_of, grants, markdown_table
from rollguard_shell.runner import SERVICES
from tests.conftest import HEAVY, scaled
from tests.relay import AccessLog, Relay
from tests.shell.test_secrets import _rollguard

ROOT = Path(__file__).resolve().parents[2]

#: Which principal each CLI command runs as (docs/security.md).
COMMAND_PRINCIPALS = {
    "topics": "admin",
    "deploy": "deployer",
    "baseline": "deployer",
    "rollback": "operator",
    "approve": "operator",
    "unlock": "operator",
    "status": "operator",
    "ledger": "auditor",
}


def test_the_docs_show_the_grants_the_code_holds() -> None:
    assert markdown_table() in (ROOT / "docs" / "security.md").read_text()


def test_deploy_kafka_acls_sh_is_what_rollguard_topics_acls_prints() -> None:
    shipped = (ROOT / "deploy" / "kafka" / "acls.sh").read_text()
    assert shipped == acl_script("rollguard."), "run: rollguard topics acls > deploy/kafka/acls.sh"


def test_every_acl_line_grants_one_principal_its_row_and_nothing_cluster_wide() -> None:
    lines = [line for line in acl_script("p.").splitlines() if "--add" in line]
    for g in grants():
        own = [line for line in lines if f"User:{g.principal} " in line]
        read = [line for line in own if "--operation Read" in line]
        write = [line for line in own if "--operation Write" in line]
        assert set(re.findall(r"--topic p\.(\S+)", " ".join(read))) == set(g.reads), g
        assert set(re.findall(r"--group p\.(\S+)", " ".join(read))) == set(g.groups), g
        assert set(re.findall(r"--topic p\.(\S+)", " ".join(write))) == set(g.writes), g
    assert not [line for line in lines if "--cluster" in line or "--topic '*'" in line]
    assert not [line for line in lines if re.search(r"--operation (All|Delete|Alter)\b", line)]


def _compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(
        (ROOT / "docker-compose.yml").read_text()
    )["services"]
    return services


def test_compose_runs_each_service_as_its_own_principal_on_a_locked_kafka() -> None:
    services = _compose()
    kafka = services["kafka"]["environment"]
    assert isinstance(kafka, dict)
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka["KAFKA_SUPER_USERS"] == "User:admin"
    assert "PLAINTEXT:PLAINTEXT" not in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    for name in SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict)
        assert env["ROLLGUARD_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["ROLLGUARD_SASL_USERNAME"] == name, name
        assert f"KAFKA_PASSWORD_{name.upper()}" in env["ROLLGUARD_SASL_PASSWORD"], name
    topics_env = services["topics"]["environment"]
    assert isinstance(topics_env, dict) and topics_env["ROLLGUARD_SASL_USERNAME"] == "admin"
    setup = services["kafka-setup"]
    script = " ".join(setup["command"])  # type: ignore[arg-type]
    users = re.search(r"for user in ([a-z ]+); do", script)
    assert users is not None
    assert set(users.group(1).split()) == {g.principal for g in grants()} - {"admin"}
    assert "sh /acls/acls.sh" in script and "./deploy/kafka:/acls:ro" in setup["volumes"]  # type: ignore[operator]


def test_every_kubernetes_pod_logs_in_as_its_own_principal() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    assert config["data"]["ROLLGUARD_SECURITY_PROTOCOL"] == "SASL_SSL"
    for name, user in [*((s, s) for s in SERVICES), ("topics-job", "admin")]:
        doc = yaml.safe_load((ROOT / "deploy" / "kubernetes" / f"{name}.yaml").read_text())
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["ROLLGUARD_SASL_USERNAME"]["value"] == user, name
        ref = env["ROLLGUARD_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("rollguard-kafka-users", user), name


@dataclass
class Wire:
    access: AccessLog
    demo: subprocess.CompletedProcess[bytes]
    cli: dict[str, subprocess.CompletedProcess[bytes]]


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    """A demo, then the CLI commands of CI and people, all through a relay that reads every
    request to the broker."""
    root = tmp_path_factory.mktemp("access")
    access = AccessLog()
    port = free_port()
    relay = Relay(port, access=access)
    broker = EmbeddedBroker(root / "tansu.log", port=port, advertised_port=relay.port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLGUARD_")}
    env.update(
        {
            "ROLLGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{relay.port}",
            "ROLLGUARD_ENABLE_IDEMPOTENCE": "false",  # as on the embedded broker
            "ROLLGUARD_STATE_DIR": str(root / "state"),
            "ROLLGUARD_TOKENS_FILE": str(root / "tokens.yaml"),
        }
    )
    with broker:
        relay.start()
        assert relay.ready.wait(10)
        try:
            demo = _rollguard(
                ["demo", "--json", "--warmup", "1.5", "--timeout", str(scaled(30))],
                env,
                scaled(240),
            )
            made = _rollguard(["tokens", "create", "--name", "dora", "--role", "sre"], env, 60)
            token = made.stdout.decode().strip().splitlines()[-1]
            person = {**env, "ROLLGUARD_TOKEN": token}
            deploy = ["deploy", "record", "--model-id", "m", "--model", "v1"]
            deploy += ["--feature-pipeline", "fp", "--config", "c", "--infra", "i"]
            cli = {
                "topics create": _rollguard(["topics", "create"], env, 60),
                "deploy record": _rollguard([*deploy, "--system-version", "s1"], env, 60),
                "deploy check": _rollguard(["deploy", "check", "m"], env, 60),
                # no decider runs here: the request is sent, its answer waited for in vain
                "rollback": _rollguard(
                    ["rollback", "m", "--as", "sre", "--timeout", "3"], person, 60
                ),
                "status": _rollguard(["status"], env, 60),
                "approve": _rollguard(["approve", "no-such-decision", "--as", "sre"], person, 60),
            }
        finally:
            relay.stop()
    yield Wire(access, demo, cli)


#: Topic and group names after the prefix: the CLI's rollguard., the demo's own run prefix.
_PREFIX = re.compile(r"^rollguard\.(demo-\d+\.)?")


def _bare(names: set[str]) -> set[str]:
    return {_PREFIX.sub("", n) for n in names}


def _principal(client_id: str) -> str | None:
    """rollguard-detector → detector; rollguard-deploy → deployer (COMMAND_PRINCIPALS)."""
    name = client_id.removeprefix("rollguard-")
    if name in SERVICES or name == "deployer":
        return name
    return COMMAND_PRINCIPALS.get(name)


@pytest.mark.broker
@HEAVY
def test_each_client_reads_and_writes_only_what_its_principal_is_granted(
    wire: Wire, figure: Callable[[str], None]
) -> None:
    assert wire.demo.returncode == 0, wire.demo.stderr.decode(errors="replace")[-3000:]
    assert json.loads(wire.demo.stdout)["rollback_applied"] is True
    for what, result in wire.cli.items():
        # no such decision (exit 2), no known-good target (exit 4), no decider to answer the
        # request (exit 7): read and written all the same
        expected = {"approve": 2, "deploy check": 4, "rollback": 7}.get(what, 0)
        assert result.returncode == expected, (what, result.stderr.decode(errors="replace"))
    log = wire.access
    assert not log.undecoded, log.undecoded
    clients = set(log.reads) | set(log.writes) | set(log.groups) | set(log.creates)
    # The demo's own watcher stands in for a person watching every topic; the demo's and
    # `up`'s provisioning runs as the process's base client id, as admin.
    principals = {c: _principal(c) for c in clients - {"rollguard-demo"}}
    principals["rollguard"] = "admin"
    unknown = [c for c, p in principals.items() if p is None and c in clients]
    assert not unknown, f"clients without a principal: {unknown}"
    rows, overreach = [], []
    for client, principal in sorted(principals.items(), key=lambda kv: str(kv[1])):
        if principal is None or client not in clients:
            continue
        g = grant_of(principal)
        reads, writes = _bare(log.reads[client]), _bare(log.writes[client])
        groups, creates = _bare(log.groups[client]), log.creates[client]
        overreach += [(client, "read", t) for t in reads - set(g.reads)]
        overreach += [(client, "write", t) for t in writes - set(g.writes)]
        overreach += [(client, "group", t) for t in groups - set(g.groups)]
        overreach += [(client, "create", t) for t in creates if not g.creates]
        rows.append(
            f"{principal:9} {client:20} read {len(reads)}/{len(g.reads)}  "
            f"write {len(writes)}/{len(g.writes)}  group {len(groups)}/{len(g.groups)}  "
            f"unused grants: {sorted((set(g.reads) - reads) | (set(g.writes) - writes)) or '-'}"
        )
    figure("used/granted per principal, over a demo and the CLI:\n" + "\n".join(rows))
    assert not overreach, f"outside their grants: {overreach}"
    seen = {principals[c] for c in clients if c in principals}
    assert set(SERVICES) | {"deployer", "operator", "admin"} <= seen, seen


@pytest.mark.parametrize(
    ("prefix", "said"),
    [
        ("", "need a prefix of their own"),
        ("-x.", "need a prefix of their own"),
        ("a" * 240, "past Kafka's 249"),
    ],
    ids=["empty", "dash", "too-long"],
)
def test_acls_for_a_prefix_that_would_grant_too_much_or_name_no_topic_are_refused(
    prefix: str, said: str
) -> None:
    """From a user probe: an empty prefix made the admin's prefixed Create cover every topic
    of the cluster; a leading dash reads as an option; a long one names no valid topic."""
    from tests.shell.test_cli import one_line_error, rollguard

    result = rollguard("topics", "acls", env={"ROLLGUARD_TOPIC_PREFIX": prefix})
    assert result.returncode == 2 and said in one_line_error(result) and result.stdout == ""
