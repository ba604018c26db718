"""Shared fixtures: real databases (SQLite and PostgreSQL), settings, the local SMTP server.

PostgreSQL: each test session creates its own database on the server named by
``DIGEST_TEST_PG_URL`` (default: the local server, trust auth) and drops it at the end, so
parallel sessions never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from digest import db as digest_db
from digest.models import Base
from digest.settings import get_settings, reset_settings_cache

PG_ADMIN_URL = os.environ.get(
    "DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DIGEST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Paths for every tier: test files sit at different depths, so they import these.
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TEST_DATA = TESTS / "data"
# A copy of a real newsroom listing, kept in the repo so its test runs on a fresh clone.
SEED_LISTING = TEST_DATA / "osce-newsroom-2025-10.txt"


@pytest.fixture(scope="session")
def pg_database_url():
    """A fresh PostgreSQL database at the latest migration, dropped after the session."""
    name = f"digest_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    digest_db.upgrade(url)
    yield url
    digest_db.engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite file at the latest migration, copied for every test that wants one."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    digest_db.upgrade(f"sqlite:///{path}")
    digest_db.engine_for(f"sqlite:///{path}").dispose()
    return path


def _truncate_pg(url: str) -> None:
    engine = digest_db.engine_for(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty, migrated database: every test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "digest.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        yield url
        digest_db.engine_for(url).dispose()
    else:
        url = request.getfixturevalue("pg_database_url")
        _truncate_pg(url)
        yield url


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template):
    """An empty, migrated SQLite database, for tests that need one backend only."""
    path = tmp_path / "digest.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    yield url
    digest_db.engine_for(url).dispose()


@pytest.fixture
def pg_url(pg_database_url):
    _truncate_pg(pg_database_url)
    return pg_database_url


def _apply_settings(monkeypatch, tmp_path, url: str, **extra: str):
    monkeypatch.setenv("DIGEST_DATABASE_URL", url)
    monkeypatch.setenv("DIGEST_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DIGEST_BROKER_URL", "")
    monkeypatch.setenv("DIGEST_SECRET_KEY", "test-secret-key-not-for-production-0123")
    monkeypatch.setenv("DIGEST_PUBLIC_BASE_URL", "https://digest.example.org")
    for key, value in extra.items():
        monkeypatch.setenv(f"DIGEST_{key.upper()}", value)
    reset_settings_cache()
    return get_settings()


@pytest.fixture
def settings(db_url, tmp_path, monkeypatch):
    """Settings pointing at ``db_url`` (SQLite and PostgreSQL), in-process tasks."""
    yield _apply_settings(monkeypatch, tmp_path, db_url)
    reset_settings_cache()


@pytest.fixture
def sqlite_settings(sqlite_url, tmp_path, monkeypatch):
    yield _apply_settings(monkeypatch, tmp_path, sqlite_url)
    reset_settings_cache()


@pytest.fixture
def session(settings):
    """A session on the test database (the caller commits)."""
    s = digest_db._sessionmaker(settings.database_url)()
    yield s
    s.close()


# --- smtp_sink: a real local SMTP server (aiosmtpd) ----------------------------------


@pytest.fixture
def smtp_sink(tmp_path, monkeypatch, request):
    """A running MailSink (outbox ``tmp_path/"outbox"``) that DIGEST_SMTP_* point at.

    Works whichever order it is requested in: env is set and the settings cache reset
    here, and a ``settings``/``sqlite_settings`` object already created for this test is
    updated too.
    """
    from digest.devtools import MailSink

    earlier = [
        request.getfixturevalue(name)
        for name in ("settings", "sqlite_settings")
        if name in request.fixturenames
    ]
    sink = MailSink(outbox=tmp_path / "outbox").start()
    monkeypatch.setenv("DIGEST_SMTP_HOST", sink.host)
    monkeypatch.setenv("DIGEST_SMTP_PORT", str(sink.port))
    reset_settings_cache()
    for obj in earlier:
        monkeypatch.setattr(obj, "smtp_host", sink.host)
        monkeypatch.setattr(obj, "smtp_port", sink.port)
    yield sink
    sink.stop()
    reset_settings_cache()


# --- tls_files: a private CA and a certificate for 127.0.0.1/localhost signed by it -------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """``ca`` (PEM the client trusts), ``cert`` and ``key`` (the server's), and ``other_ca``
    (a CA that signed nothing here) for the refusal cases."""
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def ca(common: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(name(common))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("Digest test CA")
    _, other_cert = ca("Someone else's CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {"ca": directory / "ca.pem", "other_ca": directory / "other-ca.pem",
             "cert": directory / "server.pem", "key": directory / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(pem))
    files["other_ca"].write_bytes(other_cert.public_bytes(pem))
    files["cert"].write_bytes(server_cert.public_bytes(pem))
    files["key"].write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


@pytest.fixture
def server_tls_context(tls_files):
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    return context


# --- dkim_key: an RSA key and its DNS record, for signing and verifying offline -------------


@pytest.fixture(scope="session")
def dkim_key() -> tuple[bytes, bytes]:
    """(private key PEM, the TXT record a DNS lookup of the selector would return)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


# Servers of a test's own, for faults that stop, fill or freeze them (never the machine's).
@pytest.fixture
def own_redis(tmp_path):
    from tests.ownservers import OwnRedis

    server = OwnRedis(tmp_path).start()
    yield server
    server.remove()


@pytest.fixture
def own_postgres():
    from tests.ownservers import OwnPostgres

    server = OwnPostgres().start()
    yield server
    server.remove()
