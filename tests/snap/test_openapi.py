"""Schemathesis against our OpenAPI description: generated requests, unsigned (headers and
bodies as generated) and signed as a bank would (bodies fuzzed past authentication), must get
documented SNAP answers, never a server error, and book nothing."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import asyncpg
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateways.snap import signature
from gateways.snap.server import openapi_path
from tests.snap.conftest import Harness, channel_id, client_secret, partner_id

checks = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
examples_per_operation = 25
fuzzed_paths = ("/snap/v1.0/transfer-va/inquiry", "/snap/v1.0/transfer-va/payment")


async def test_served_description_is_the_file(harness: Harness) -> None:
    async with harness.http.get(harness.base_url + "/snap/openapi.json") as response:
        assert response.status == 200
        served = await response.json()
    assert served == json.loads(openapi_path.read_text())
    assert set(served["paths"]) == {"/snap/v1.0/access-token/b2b", *fuzzed_paths}


async def test_generated_requests_get_documented_answers(harness: Harness) -> None:
    schema = schemathesis.openapi.from_dict(json.loads(openapi_path.read_text()))
    token = await harness.session.access_token()
    external_ids = itertools.count(1)
    base_url = harness.base_url
    signed_codes: set[str] = set()

    def fuzz(path: str) -> None:
        operation = schema[path]["POST"]

        @settings(
            max_examples=examples_per_operation,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def unsigned_and_signed(case: Any) -> None:
            # as generated: garbage headers must be refused with a SNAP answer
            kwargs = case.as_transport_kwargs(base_url=base_url)
            response = requests.request(**kwargs, timeout=10)
            case.validate_response(response, checks=checks)
            # signed by the bank: the body is what gets checked
            body = signature.minified_json(case.body)
            timestamp = signature.format_timestamp(harness.clock.now())
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-TIMESTAMP": timestamp,
                "X-SIGNATURE": signature.sign_transaction(
                    client_secret, "POST", path, token, body, timestamp
                ),
                "X-PARTNER-ID": partner_id,
                "X-EXTERNAL-ID": str(next(external_ids)),
                "CHANNEL-ID": channel_id,
            }
            signed = requests.post(base_url + path, data=body, headers=headers, timeout=10)
            case.validate_response(signed, checks=checks)
            assert signed.status_code in (400, 404), signed.text
            signed_codes.add(signed.json()["responseCode"])

        unsigned_and_signed()

    for path in fuzzed_paths:
        await asyncio.to_thread(fuzz, path)

    # the signed requests got past authentication, to the field checks and the VA lookup
    assert {"4002401", "4002402", "4002501", "4002502"} & signed_codes, signed_codes
    connection = await asyncpg.connect(harness.database_url)
    try:
        assert await connection.fetchval("select count(*) from snap_va_payments") == 0
        assert await connection.fetchval("select count(*) from pending_top_ups") == 0
    finally:
        await connection.close()
