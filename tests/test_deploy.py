"""docker-compose.yml and deploy/ cannot run here (no Docker engine): check they name only
services and commands the CLI has."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollguard.authority import TokenRegistry, create_token
from rollguard.errors import ConfigError
from rollguard.secrets import check_private
from rollguard.settings import RollguardSettings
from rollguard.signing import generate_keypair, load_signer
from rollguard_services.api.alerts import read_secret
from rollguard_services.api.settings import ApiSettings
from rollguard_services.ledger.settings import LedgerSettings
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


KUBERNETES = ROOT / "deploy" / "kubernetes"
#: Secrets whose files rollguard takes only when group and others may not read them
#: (rollguard.secrets.check_private): private keys, the tokens file, the receiver's secret.
PRIVATE_SECRETS = {"rollguard-keys", "rollguard-tokens", "rollguard-alertmanager"}
#: Public keys only: mounted as they are.
PUBLIC_SECRETS = {"rollguard-trusted-keys"}
#: The one key of rollguard-keys each signing service's pod is given.
OWN_KEY = {
    "decider": "signing.pem",
    "detector": "detector.pem",
    "executor": "executor.pem",
    "api": "api.pem",
}
#: "install -m MODE SRC DST", one per line of an init container's script.
INSTALL = re.compile(r"^\s*install -m (\d+) (\S+) (\S+)\s*$", re.MULTILINE)

Pod = dict[str, Any]


def pods() -> list[tuple[str, Pod]]:
    """(file stem, pod spec) of every Deployment and Job of deploy/kubernetes."""
    out = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None and doc.get("kind") in ("Deployment", "Job"):
                out.append((path.stem, doc["spec"]["template"]["spec"]))
    return out


def pod_of(name: str) -> Pod:
    (pod,) = [pod for stem, pod in pods() if stem == name]
    return pod


def main_container(pod: Pod) -> dict[str, Any]:
    container: dict[str, Any]
    (container,) = pod["containers"]
    return container


def service_of(container: dict[str, Any]) -> str:
    args = container.get("args") or []
    return args[1] if args[:1] == ["run"] else ""


def settings_of(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[RollguardSettings, ApiSettings, LedgerSettings]:
    """The settings the container's rollguard reads: rollguard-env, then its own env."""
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["rollguard-env"]
    env = yaml.safe_load((KUBERNETES / "configmap.yaml").read_text())["data"]
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("ROLLGUARD_")]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return RollguardSettings(), ApiSettings(), LedgerSettings()


def volume_at(container: dict[str, Any], path: str | Path) -> tuple[str, str, bool] | None:
    """(volume, path inside it, read only) of what ``container`` sees at ``path``."""
    path = str(path)
    best: dict[str, Any] | None = None
    for mount in container.get("volumeMounts", []):
        at = mount["mountPath"].rstrip("/")
        if (path == at or path.startswith(at + "/")) and (
            best is None or len(at) > len(best["mountPath"].rstrip("/"))
        ):
            best = mount
    if best is None:
        return None
    inside = path[len(best["mountPath"].rstrip("/")) :].lstrip("/")
    return best["name"], inside, bool(best.get("readOnly"))


def copies(init: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(mode, source, destination) of each ``install`` of an init container's script."""
    assert init["command"][:2] == ["sh", "-c"], init["name"]
    return INSTALL.findall(init["command"][2])


def secret_volumes(pod: Pod) -> dict[str, dict[str, Any]]:
    return {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}


def test_every_kubernetes_service_mounts_the_trusted_keys_and_only_its_own_private_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every service checks who signed what it reads (issue 13): the trusted public keys where
    ROLLGUARD_TRUSTED_KEYS_DIR points; a signing service its own private key and no other,
    copied by its init container from rollguard-keys to where it reads its key."""
    for name in ("decider", "detector", "executor", "router", "notifier", "ledger", "api"):
        pod = pod_of(name)
        container = main_container(pod)
        service = service_of(container)
        settings, _, _ = settings_of(container, monkeypatch)
        volumes = {v["name"]: v for v in pod["volumes"]}
        trusted = volume_at(container, settings.resolved_trusted_keys_dir)
        assert trusted is not None and trusted[1:] == ("", True), name
        assert volumes[trusted[0]]["secret"]["secretName"] == "rollguard-trusted-keys", name
        keys = {v: s for v, s in secret_volumes(pod).items() if s["secretName"] == "rollguard-keys"}
        items = [(i["key"], i["path"]) for s in keys.values() for i in s.get("items", [])]
        assert [key for key, _ in items] == ([OWN_KEY[name]] if name in OWN_KEY else []), name
        assert all("items" in s for s in keys.values()), name  # else: every role's key
        if name not in OWN_KEY:
            continue
        # Where it reads its key: an emptyDir it may only read...
        seen = volume_at(container, settings.key_file(service))
        assert seen is not None, name
        into, inside, read_only = seen
        assert read_only and "emptyDir" in volumes[into], name
        # ... which an init container filled with the Secret's one key, and nothing else.
        ((secret, _),) = keys.items()
        ((_, path),) = items
        written = []
        for init in pod.get("initContainers", []):
            for mode, src, dst in copies(init):
                source, target = volume_at(init, src), volume_at(init, dst)
                assert source is not None and target is not None, (name, src, dst)
                if target[0] == into or source[0] == secret:
                    written.append((mode, source[:2], target[:2]))
        assert written == [("0600", (secret, path), (into, inside))], name


@pytest.mark.parametrize("name, pod", pods(), ids=[name for name, _ in pods()])
def test_private_secrets_reach_the_services_only_as_private_copies(name: str, pod: Pod) -> None:
    """Under the pod's fsGroup the kubelet makes every file of a Secret volume group readable
    whatever its defaultMode (kubernetes/kubernetes#57923), and rollguard refuses such a key,
    tokens file or secret. So no container rollguard runs in mounts such a Secret: an init
    container reads it and copies each of its files, 0600 under umask 077, into an emptyDir of
    the pod (in memory), which the service mounts read only."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in pod["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            assert source.get("secret", {}).get("name") not in PRIVATE_SECRETS, volume["name"]
    main_mounts = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    for vname, secret in secret_volumes(pod).items():
        assert secret["secretName"] in PRIVATE_SECRETS | PUBLIC_SECRETS, (
            f"{name}: Secret {secret['secretName']}: private or public?"
        )
        if secret["secretName"] in PUBLIC_SECRETS:
            continue
        assert vname not in main_mounts, f"{name}: {vname} is mounted by a service, not copied"
        paths = [i["path"] for i in secret["items"]]  # only the files this pod needs
        assert paths and secret["defaultMode"] == 0o400, (name, vname)
        readers = [
            (init, m)
            for init in pod.get("initContainers", [])
            for m in init["volumeMounts"]
            if m["name"] == vname
        ]
        assert readers, f"{name}: {vname} is mounted by nothing"
        for init, mount in readers:
            assert mount.get("readOnly") is True, (name, vname)
            script = init["command"][2]
            assert re.search(r"^\s*umask 077\s*$", script, re.MULTILINE), (name, init["name"])
            done = {}
            for mode, src, dst in copies(init):
                source = volume_at(init, src)
                if source is None or source[0] != vname:
                    continue
                assert mode == "0600", (name, src)
                target = volume_at(init, dst)
                assert target is not None, (name, dst)
                into = volumes[target[0]]
                assert "emptyDir" in into, f"{name}: {src} is copied into {target[0]}"
                # The receiver's secret goes to state_dir/alertmanager.token, the default of a
                # setting that may not name a missing file (the Secret is optional): the
                # state emptyDir, on the node's disk. Everything else only into memory.
                if secret["secretName"] != "rollguard-alertmanager":
                    assert into["emptyDir"].get("medium") == "Memory", (name, dst)
                    assert into["emptyDir"].get("sizeLimit"), (name, dst)
                    seen = [
                        m
                        for c in pod["containers"]
                        for m in c["volumeMounts"]
                        if m["name"] == target[0]
                    ]
                    assert seen and all(m.get("readOnly") is True for m in seen), (name, dst)
                done[source[1]] = dst
            assert sorted(done) == sorted(paths), (name, vname, done)


def _fill(pod: Pod, root: Path, present: bool) -> list[Path]:
    """A directory per volume of ``pod`` under ``root``, Secrets as the kubelet leaves them
    under fsGroup (mode 0440; an optional one empty unless ``present``); the ledger's state
    as a restart finds it (its key 0660) when ``present``. The private files, as mounted."""
    private = []
    for volume in pod["volumes"]:
        here = root / volume["name"]
        here.mkdir()
        secret = volume.get("secret")
        if "persistentVolumeClaim" in volume and present:
            key = here / "keys" / "ledger.pem"
            generate_keypair(key, here / "keys" / "ledger-trusted")
            private.append(key)
            key.chmod(0o660)
        if secret is None or (secret.get("optional") and not present):
            continue
        for item in secret.get("items", []):
            file = here / item["path"]
            if secret["secretName"] == "rollguard-keys":
                generate_keypair(file, root / "public")
            elif secret["secretName"] == "rollguard-tokens":
                create_token(file, "ann", "sre")
            elif secret["secretName"] == "rollguard-alertmanager":
                file.write_text(secrets.token_hex(32) + "\n")
            else:
                pytest.fail(f"what is in {secret['secretName']}/{item['key']}?")
            file.chmod(0o440 if secret["secretName"] in PRIVATE_SECRETS else 0o444)
            private.append(file)
    return private


def _moved(script: str, mounts: dict[str, Path]) -> str:
    """``script`` with each path under a mount point moved under the directory it maps to."""
    at = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))

    def move(match: re.Match[str]) -> str:
        return str(mounts[match[1]])

    return re.sub(rf"(?<![\w./-])({at})(?=/|\s|$)", move, script)


def _run_init_containers(pod: Pod, root: Path) -> None:
    """Each init container's script, its mounts moved to the volumes' directories."""
    for init in pod.get("initContainers", []):
        assert init["command"][:2] == ["sh", "-c"], init["name"]
        mounts = {m["mountPath"].rstrip("/"): root / m["name"] for m in init["volumeMounts"]}
        script = _moved(init["command"][2], mounts)
        outside = [
            p for p in re.findall(r"(?<![\w./-])/[\w./-]+", script) if not p.startswith(str(root))
        ]
        assert not outside, f"{init['name']} touches {outside}: not its volumes"
        subprocess.run(["sh", "-c", script], check=True, timeout=30)


@pytest.mark.parametrize("present", [True, False], ids=["secrets", "no-optional-secrets"])
@pytest.mark.parametrize("name", [name for name, _ in pods()])
def test_init_containers_leave_private_files_the_services_take(
    name: str, present: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run each pod's init containers on its volumes as the kubelet hands them over (group
    readable): the service then finds its key, tokens file and secret where its settings
    point, mode 0600, and takes them; the files as mounted it would refuse."""
    pod = pod_of(name)
    private = _fill(pod, tmp_path, present)
    for file in private:
        with pytest.raises(ConfigError, match="open to group or others"):
            check_private(file, "as mounted")
    _run_init_containers(pod, tmp_path)
    container = main_container(pod)
    service = service_of(container)
    settings, api, ledger = settings_of(container, monkeypatch)

    def seen(path: Path) -> Path:
        where = volume_at(container, path)
        assert where is not None, f"{name} has nothing at {path}"
        return tmp_path / where[0] / where[1]

    for init in pod.get("initContainers", []):
        for _, _, dst in copies(init):
            target = volume_at(init, dst)
            assert target is not None
            copied = tmp_path / target[0] / target[1]
            if copied.exists():
                assert stat.S_IMODE(copied.stat().st_mode) == 0o600, dst
    if service in OWN_KEY:
        load_signer(seen(settings.key_file(service)))
    if any(s["secretName"] == "rollguard-tokens" for s in secret_volumes(pod).values()):
        tokens = seen(settings.resolved_tokens_file)
        assert tokens.exists() is present, tokens
        assert len(TokenRegistry.load(tokens)) == (1 if present else 0)
    if any(s["secretName"] == "rollguard-alertmanager" for s in secret_volumes(pod).values()):
        receiver = api.alertmanager_secret_path(seen(settings.state_dir))
        assert (receiver is not None) is present
        if receiver is not None:
            assert len(read_secret(receiver)) == 64
    if service == "ledger":
        key = seen(ledger.resolved_checkpoint_key_file(settings.state_dir))
        assert key.exists() is present
        if present:
            load_signer(key)


def test_the_decider_and_the_api_read_the_tokens_file_of_rollguard_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Who may request and approve: the decider takes only what a person of the tokens file
    signed, the api refuses the others first. Both from the one optional Secret."""
    for name in ("decider", "api"):
        pod = pod_of(name)
        settings, _, _ = settings_of(main_container(pod), monkeypatch)
        (tokens,) = [
            s for s in secret_volumes(pod).values() if s["secretName"] == "rollguard-tokens"
        ]
        assert tokens["optional"] is True and tokens["items"] == [
            {"key": "tokens.yaml", "path": "tokens.yaml"}
        ], name
        dsts = [dst for init in pod["initContainers"] for _, _, dst in copies(init)]
        assert str(settings.resolved_tokens_file) in dsts, name
