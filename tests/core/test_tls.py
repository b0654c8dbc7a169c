"""TLS to the broker end to end (issue 13, part 3): rollguard's clients
(ROLLGUARD_SECURITY_PROTOCOL=SSL, ROLLGUARD_SSL_CAFILE) provision, publish and read through a
TLS listener whose certificate a CA made here signed, and refuse one their CA did not sign.

The embedded Tansu 0.6 cannot terminate TLS itself (its --cert and --key flags cannot be
given together, and neither makes it speak TLS), so the listener is a TLS terminator on
loopback (Python's ssl, TLS 1.2+) in front of it, advertised as the broker's address: every
client connection, metadata and data alike, goes through TLS. SASL cannot be tested here (no
broker here has SASL/SCRAM users), so its settings are checked against what aiokafka gets."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rollguard import topics
from rollguard.broker import EmbeddedBroker, free_port
from rollguard.bus import client_options, provision_topics, publish_one, read_topic
from rollguard.errors import BrokerUnavailable, ConfigError
from rollguard.events import Breach
from rollguard.settings import RollguardSettings
from rollguard.signing import ensure_keys, signer_of, trust_of
from tests.factories import breach
from tests.relay import Relay

pytestmark = pytest.mark.broker


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(directory: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _server(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "broker.pem", directory / "broker.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(bootstrap, the CA that signed its certificate, another CA) of a TLS-only listener."""
    where = tmp_path_factory.mktemp("tls")
    ca_key, ca, ca_path = _ca(where, "rollguard-test-ca")
    _, _, other = _ca(where, "someone-else")
    cert, key = _server(where, ca_key, ca)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tansu_port = free_port()
    terminator = Relay(tansu_port, tls=context)  # a TLS listener in front of Tansu
    broker = EmbeddedBroker(where / "tansu.log", port=tansu_port, advertised_port=terminator.port)
    with broker:
        terminator.start()
        assert terminator.ready.wait(10)
        try:
            yield f"127.0.0.1:{terminator.port}", ca_path, other
        finally:
            terminator.stop()


def _settings(bootstrap: str, tmp_path: Path, **tls: object) -> RollguardSettings:
    return RollguardSettings(
        kafka_bootstrap=bootstrap,
        enable_idempotence=False,
        state_dir=tmp_path / "state",
        connect_timeout_s=5,
        **tls,  # type: ignore[arg-type]
    )


async def test_signed_events_go_through_a_tls_broker_whose_ca_the_client_trusts(
    tls_broker: tuple[str, Path, Path], tmp_path: Path
) -> None:
    bootstrap, ca, _ = tls_broker
    settings = _settings(bootstrap, tmp_path, security_protocol="SSL", ssl_cafile=ca)
    ensure_keys(settings)
    await provision_topics(settings)
    sent = signer_of(settings, "detector").sign(breach())
    await publish_one(settings, topics.BREACHES.name, sent, sent.key)
    records = await read_topic(settings, topics.BREACHES.name)
    got = [Breach.model_validate_json(r.value) for r in records]
    assert [b.event_id for b in got] == [sent.event_id]
    assert trust_of(settings).check(got[0]).ok


@pytest.mark.parametrize("client", ["another CA", "plaintext"])
async def test_a_client_refuses_a_broker_its_ca_did_not_sign_and_plaintext_gets_nothing(
    tls_broker: tuple[str, Path, Path], tmp_path: Path, client: str
) -> None:
    bootstrap, _, other = tls_broker
    tls = {"security_protocol": "SSL", "ssl_cafile": other} if client == "another CA" else {}
    settings = _settings(bootstrap, tmp_path, **tls)
    with pytest.raises(BrokerUnavailable):
        await provision_topics(settings)


def test_sasl_settings_reach_the_client_and_incomplete_ones_are_refused(tmp_path: Path) -> None:
    """Not against a broker: none here has SASL/SCRAM users (docs/security.md says so)."""
    full = RollguardSettings(
        kafka_bootstrap="kafka:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="detector",
        sasl_password="s3cret",  # type: ignore[arg-type]
    )
    opts = client_options(full)
    assert opts["security_protocol"] == "SASL_SSL" and opts["ssl_context"] is not None
    assert (opts["sasl_mechanism"], opts["sasl_plain_username"]) == ("SCRAM-SHA-512", "detector")
    assert opts["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(full)  # a secret in the settings never prints
    with pytest.raises(ConfigError, match="ROLLGUARD_SASL_USERNAME"):
        client_options(full.model_copy(update={"sasl_username": None}))
    missing = full.model_copy(
        update={"security_protocol": "SSL", "ssl_cafile": tmp_path / "no-such-ca.pem"}
    )
    with pytest.raises(ConfigError, match="ROLLGUARD_SSL_CAFILE"):
        client_options(missing)
