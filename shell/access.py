"""Least privilege on Kafka: the one principal of each service and exactly which topics it
reads and writes and which consumer group it uses.

The table docs/security.md shows, `rollguard acls` turns into Kafka ACL commands, the compose
file gives each container its principal from, and tests/shell/test_access.py holds against
what each service's clients really send to a broker (every Produce, Fetch and group request,
read off the wire)."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass

from rollguard import topics
from rollguard.settings import RollguardSettings
from rollguard_services.decider.settings import DeciderSettings
from rollguard_services.detector.settings import DetectorSettings
from rollguard_services.executor.settings import ExecutorSettings
from rollguard_services.ledger.settings import LedgerSettings
from rollguard_services.notifier.settings import NotifierSettings

DATA = ("predictions", "latency", "business", "health", "outcomes")
#: Kafka's longest topic name.
MAX_TOPIC_NAME = 249


@dataclass(frozen=True)
class Grant:
    """What one principal may do; topic and group names are after the topic prefix."""

    principal: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    groups: tuple[str, ...] = ()
    #: Topics it may create (CreateTopics): the admin only.
    creates: bool = False
    note: str = ""


def _decider_internal(prefix: str = "") -> dict[str, dict[str, str]]:
    """The decider's own topics (faust's), after ``prefix``, with the configs they are made
    with: its ticks and its state table's changelog."""
    svc = DeciderSettings()
    return {
        svc.ticks_topic(prefix): {},
        svc.changelog_topic(prefix): {"cleanup.policy": "compact"},
    }


def grants() -> tuple[Grant, ...]:
    own = tuple(_decider_internal())  # the decider's faust topics
    dl = topics.DEADLETTER.name
    return (
        Grant(
            "router",
            reads=("deployments",),
            writes=DATA,
            note="reference integration; your serving layer in its place",
        ),
        Grant(
            "detector",
            reads=(*DATA, "deployments", "baselines"),
            writes=("breaches", "baselines", topics.TRAFFIC.name, dl),
            groups=(DetectorSettings().group_id,),
        ),
        Grant(
            "decider",
            reads=(
                *("deployments", "breaches", "acks", "health", "requests", "approvals"),
                *(topics.TRAFFIC.name, *own),
            ),
            writes=("decisions", "commands", "acks", "deployments", "model-status", dl, *own),
            groups=(DeciderSettings().app_id,),
        ),
        Grant(
            "executor",
            reads=("commands",),
            writes=("acks", "invalidations", "deployments", dl),
            groups=(ExecutorSettings().group_id,),
        ),
        Grant(
            "ledger",
            reads=(
                *(t.name for t in topics.ALL if t.ledgered and t.control),
                topics.LEDGER_CHECKPOINTS.name,
            ),
            writes=(topics.LEDGER_CHECKPOINTS.name, dl),
            groups=(LedgerSettings().group_id,),
            note="Write on ledger-checkpoints, never Delete or Alter: it cannot take one back",
        ),
        Grant(
            "notifier",
            reads=("breaches", "decisions", "acks"),
            writes=(dl,),
            groups=(NotifierSettings().group_id,),
        ),
        Grant(
            "api",
            reads=("model-status", "decisions", "acks"),
            writes=("requests", "approvals", "alerts", "breaches"),
            note="publishes what people ask through it, signed with their token's key (as the "
            "CLI does), and the alerts Alertmanager posts and the breaches they become, signed "
            "with its own; reads the ledger's database, never writes it",
        ),
        Grant(
            "deployer",
            reads=("model-status",),
            writes=("deployments", "baselines"),
            note="CI: rollguard deploy record, baseline import",
        ),
        Grant(
            "drill",
            reads=("deployments", "breaches", "decisions", "commands", "acks"),
            writes=(*DATA, "deployments", "baselines", topics.DRILLS.name),
            note="rollguard drill: deploys drill models, serves their traffic (as a model "
            "server), imports their baselines, watches the chain, records each run (the "
            "deployer's key signs)",
        ),
        Grant(
            "operator",
            reads=("decisions", "acks", "model-status"),
            writes=("requests", "approvals"),
            note="people: rollguard rollback, approve, unlock (they wait for the answer on "
            "decisions and acks), status, incident show",
        ),
        Grant(
            "auditor",
            reads=(topics.LEDGER_CHECKPOINTS.name,),
            writes=(),
            note="rollguard ledger verify",
        ),
        Grant(
            "admin",
            reads=(),
            writes=(),
            creates=True,
            note="rollguard topics create (and the ACLs themselves); no service runs as it",
        ),
    )


def grant_of(principal: str) -> Grant:
    for grant in grants():
        if grant.principal == principal:
            return grant
    raise KeyError(principal)


def topic_names() -> set[str]:
    """Every topic of the grants, after the prefix."""
    return {t for g in grants() for t in (*g.reads, *g.writes)}


def internal_topics(settings: RollguardSettings) -> dict[str, dict[str, str]]:
    """The decider's faust topics `rollguard topics create` makes too, with their configs, so
    that the decider never needs Create (faust declares only a topic it cannot see)."""
    return _decider_internal(settings.topic_prefix)


def acl_commands(prefix: str, *, principal_type: str = "User") -> Iterator[str]:
    """kafka-acls.sh lines (for Apache Kafka's CLI) granting each principal its row."""
    head = '"$KAFKA_ACLS" --bootstrap-server "$KAFKA_BOOTSTRAP" $KAFKA_ACLS_OPTS --add'
    for g in grants():
        who = f"--allow-principal {principal_type}:{g.principal}"

        def names(kind: str, items: tuple[str, ...]) -> str:
            return " ".join(f"--{kind} {shlex.quote(prefix + n)}" for n in sorted(set(items)))

        if g.reads or g.groups:
            resources = " ".join(
                x for x in (names("topic", g.reads), names("group", g.groups)) if x
            )
            yield f"{head} {who} --operation Read {resources}"
        if g.writes:
            yield f"{head} {who} --operation Write {names('topic', g.writes)}"
        if g.creates:
            # Create on the topics under the prefix only, not on the cluster.
            yield (
                f"{head} {who} --operation Create --operation Describe "
                f"--resource-pattern-type prefixed --topic {shlex.quote(prefix)}"
            )


def acl_script(prefix: str, *, principal_type: str = "User") -> str:
    """A POSIX sh script that applies every ACL; deploy/kafka/acls.sh is this, for the default
    prefix (a test keeps it current)."""
    lines = [
        "#!/bin/sh",
        f"# Generated by `rollguard topics acls` for the topic prefix {prefix!r}; do not edit.",
        "# Grants each rollguard principal exactly its row of docs/security.md (least privilege).",
        "#   KAFKA_BOOTSTRAP   a broker to talk to (required)",
        "#   KAFKA_ACLS        the kafka-acls.sh to run (default: kafka-acls.sh on PATH)",
        "#   KAFKA_ACLS_OPTS   more options, e.g. --command-config admin.properties",
        "set -eu",
        ': "${KAFKA_BOOTSTRAP:?set KAFKA_BOOTSTRAP to a broker}"',
        'KAFKA_ACLS="${KAFKA_ACLS:-kafka-acls.sh}"',
        'KAFKA_ACLS_OPTS="${KAFKA_ACLS_OPTS:-}"',
        *acl_commands(prefix, principal_type=principal_type),
        "",
    ]
    return "\n".join(lines)


def markdown_table() -> str:
    """The table docs/security.md shows (a test keeps the two the same)."""
    rows = ["| principal | reads | writes | group |", "|---|---|---|---|"]
    for g in grants():
        writes = ", ".join(g.writes) or ("— (creates the topics)" if g.creates else "—")
        rows.append(
            f"| {g.principal} | {', '.join(g.reads) or '—'} | {writes} "
            f"| {', '.join(g.groups) or '—'} |"
        )
    return "\n".join(rows)
