"""OpenAPI-driven fuzzing (schemathesis) of /api/v1: whatever it sends, no 500 comes back.

Every operation of the schema gets valid (positive) and invalid (negative) generated
requests. Bounded for a 2-core CI box: a few dozen examples per operation and mode, on
SQLite, through the app in-process (ASGI), with a real local SMTP server for the sends that
items and runs start. (The loop is explicit rather than ``schema.parametrize`` because
schemathesis' fixture loader does not run on pytest 9.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from digest import db
from digest.settings import get_settings, reset_settings_cache
from tests.conftest import TEST_DATA
from tests.factories import Taxo

TOKEN = "fuzz-token-0123456789"
BOUNCES = TEST_DATA / "bounces"

# Bounce reports are raw messages: fuzz with real samples, their mutations and random bytes.
schemathesis.openapi.media_type(
    "message/rfc822",
    st.one_of(
        st.sampled_from([p.read_bytes() for p in sorted(BOUNCES.glob("*.eml"))]),
        st.builds(lambda raw, cut: raw[:cut],
                  st.sampled_from([p.read_bytes() for p in sorted(BOUNCES.glob("*.eml"))]),
                  st.integers(0, 4000)),
        st.binary(max_size=2000),
    ),
)
EXAMPLES = 25


def test_fuzzed_api_requests_never_get_a_server_error(sqlite_settings, smtp_sink, monkeypatch):
    from digest.web import create_app

    monkeypatch.setenv("DIGEST_API_TOKEN", TOKEN)
    reset_settings_cache()
    s = get_settings()
    with db._sessionmaker(s.database_url)() as session:
        Taxo(session)
        session.commit()
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(s))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    tried = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case):
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error]
                )

            fuzz()
            tried.append(f"{operation.label} ({mode.value})")
    assert len(tried) == 2 * len(operations)
