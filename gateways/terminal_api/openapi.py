"""The OpenAPI 3.1 description of the terminal side (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from bus_terminals.wire import (
    deny_list_version_header,
    record_fields,
    signature_header,
    terminal_header,
    timestamp_header,
    upload_body_bytes_max,
    upload_records_max,
)


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _admin(summary: str, required: list[str]) -> dict[str, Any]:
    """A change through the admin API: every one names why (`reason`, logged with who)."""
    return {
        "summary": summary,
        "security": [{"staff": []}],
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {"type": "object", "required": [*required, "reason"]}
                }
            }
        },
        "responses": {
            "201": {"description": "created or already there"},
            "400": _problem("bad field"),
            "401": _problem("no staff token of one's own, or a revoked one"),
            "403": _problem("the token's role may not do this"),
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "KSH back office: terminal side", "version": "1"},
        "components": _components(),
        "paths": {
            **_terminal_paths(),
            **_admin_paths(),
            **_desk_paths(),
            **_service_paths(),
        },
    }


def _components() -> dict[str, Any]:
    """The staff token scheme, and the schemas of a problem and of an upload batch."""
    return {
        "securitySchemes": {
            "staff": {
                "type": "http",
                "scheme": "bearer",
                "description": "one person's staff token (ksh settle staff USER "
                "--issue-token), acting in its role",
            }
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string"},
                    "detail": {"type": "string"},
                },
            },
            "UploadBatch": {
                "type": "object",
                "required": ["version", "terminal_id", "batch_sequence", "fields", "records"],
                "properties": {
                    "version": {"const": 1},
                    "terminal_id": {"type": "string", "maxLength": 32},
                    "batch_sequence": {"type": "integer", "minimum": 1},
                    "fields": {"const": [name for name, _ in record_fields]},
                    "records": {
                        "type": "array",
                        "maxItems": upload_records_max,
                        "items": {"type": "array", "minItems": len(record_fields)},
                    },
                },
                "description": f"at most {upload_body_bytes_max} bytes; records follow 'fields'",
            },
        },
    }


def _terminal_paths() -> dict[str, Any]:
    """What terminals call, signed with their key: uploads, sync, the deny list, packages."""
    terminal_headers = [
        {"name": terminal_header, "in": "header", "required": True, "schema": {"type": "string"}},
        {
            "name": signature_header,
            "in": "header",
            "required": True,
            "description": "base64 Ed25519 signature of the body (uploads) or of "
            "'METHOD\\nPATH?QUERY\\nTIMESTAMP' (downloads)",
            "schema": {"type": "string"},
        },
    ]
    timestamp = {
        "name": timestamp_header,
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
    }
    return {
        "/terminal/v1/uploads": {
            "post": {
                "summary": "Upload a signed batch of journal records",
                "parameters": terminal_headers,
                "requestBody": {
                    "content": {
                        "application/vnd.ksh.upload+json": {
                            "schema": {"$ref": "#/components/schemas/UploadBatch"}
                        }
                    }
                },
                "responses": {
                    "200": {"description": "accepted or exists (a replay): records acknowledged"},
                    "400": _problem("malformed"),
                    "401": _problem("unknown terminal or bad signature"),
                    "403": _problem("terminal revoked or suspended"),
                    "409": _problem("batch out of order or conflicting replay"),
                    "413": _problem("body too large"),
                    "422": _problem("record kind not allowed for the terminal's role"),
                },
            }
        },
        "/terminal/v1/sync": {
            "get": {
                "summary": "Deny list delta (cards added and lifted since deny_since), "
                "pending top-ups, tariff and key versions",
                "parameters": [
                    *terminal_headers,
                    timestamp,
                    {"name": "deny_since", "in": "query", "schema": {"type": "integer"}},
                    {
                        "name": "chip_block_since",
                        "in": "query",
                        "description": "the version of the terminal's chip-block list; the "
                        "answer then carries chip_block_version, _full_download, _added, _lifted",
                        "schema": {"type": "integer"},
                    },
                    {
                        "name": "feed_service_end",
                        "in": "query",
                        "description": "a validator's fare feed: its last service day, "
                        "YYYYMMDD (shown as days left on /health and /metrics)",
                        "schema": {"type": "string", "pattern": "^[0-9]{8}$"},
                    },
                    *_fleet_report_parameters(),
                ],
                "responses": {
                    "200": {
                        "description": "sync state, with `packages`: the fleet packages newer "
                        "than those the terminal runs (kind, version, signed manifest)"
                    },
                    "400": _problem("a query value is malformed"),
                },
            }
        },
        "/terminal/v1/deny-list": {
            "get": {
                "summary": "The whole deny list: little-endian u64 card numbers, sorted",
                "parameters": [*terminal_headers, timestamp],
                "responses": {
                    "200": {"description": f"binary list; {deny_list_version_header} header"}
                },
            }
        },
        "/terminal/v1/chip-block-list": {
            "get": {
                "summary": "The denied cards a tap blocks on the chip (lost, stolen, damaged, "
                "replaced): little-endian u64 card numbers, sorted",
                "parameters": [*terminal_headers, timestamp],
                "responses": {
                    "200": {"description": f"binary list; {deny_list_version_header} header"}
                },
            }
        },
        "/terminal/v1/packages/{kind}/{version}": _package_path([*terminal_headers, timestamp]),
    }


def _fleet_report_parameters() -> list[dict[str, Any]]:
    """Sync's query of what the terminal runs, staged and refused (`bus_terminals.fleet`)."""
    return [
        {
            "name": name,
            "in": "query",
            "description": f"fleet packages {what}, per kind",
            "schema": {"type": "string", "example": example},
        }
        for name, what, example in (
            ("running", "the terminal runs", "fare_feed:3,settings:1"),
            ("staged", "staged (the newest)", "fare_feed:4"),
            ("refused", "refused (the newest)", "fare_feed:5:signature_invalid"),
        )
    ]


def _package_path(signed_headers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "get": {
            "summary": "A fleet package's content, checked by the terminal against the "
            "signed manifest sync offered",
            "parameters": [
                *signed_headers,
                {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "version",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer"},
                },
            ],
            "responses": {
                "200": {"description": "the content, application/octet-stream"},
                "404": _problem("no such package (or not for the terminal's role)"),
            },
        }
    }


def _admin_paths() -> dict[str, Any]:
    """What staff call with their own token: registrations, top-ups, monitoring."""
    return {
        "/admin/v1/operators": {"post": _admin("Register a bus operator", ["operator_id"])},
        "/admin/v1/merchants": {"post": _admin("Register a merchant", ["merchant_id"])},
        "/admin/v1/terminals": {
            "post": _admin("Register a terminal", ["terminal_id", "public_key", "role"])
        },
        "/admin/v1/terminals/{terminal_id}/revoke": {"post": _admin("Revoke a terminal", [])},
        "/admin/v1/terminals/{terminal_id}/resume": {
            "post": _admin("Lift a terminal's suspension", [])
        },
        "/admin/v1/quarantine/{terminal_id}/{sequence}/release": {
            "post": _admin("Ask for or confirm (a second supervisor) a release", [])
        },
        "/admin/v1/quarantine/{terminal_id}/{sequence}/write-off": {
            "post": _admin("Ask for or confirm (a second supervisor) a write-off", [])
        },
        "/admin/v1/cards": {
            "post": _admin("Register a card (creates its accounts)", ["card_number"])
        },
        "/admin/v1/pending-top-ups": {
            "post": _admin(
                "Book a payment for a card and announce it as a pending top-up (source "
                '"drawer": cash taken at the caller\'s counter)',
                ["top_up_id", "card_number", "amount_rupiah"],
            )
        },
        "/admin/v1/cards/{card_number}": {
            "get": {
                "summary": "Card monitoring view",
                "security": [{"staff": []}],
                "responses": {"200": {"description": "shadow balance, purse, flags"}},
            }
        },
        "/admin/v1/monitoring/counter-gaps": {
            "get": {
                "summary": "Cards whose booked counters skip",
                "security": [{"staff": []}],
                "responses": {"200": {"description": "card, highest counter, missing"}},
            }
        },
        "/admin/v1/monitoring/record-gaps": {
            "get": {
                "summary": "Terminals whose uploaded journal sequences skip",
                "security": [{"staff": []}],
                "responses": {"200": {"description": "terminal, highest sequence, missing"}},
            }
        },
    }


def _read(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"staff": []}],
        "responses": {"200": {"description": "JSON"}},
    }


def _desk_paths() -> dict[str, Any]:
    """The service desk's card work (`card_desk_routes`): holders, blocks, replacements, the
    deny list's entries."""
    card = "/admin/v1/cards/{card_number}"
    deny = "/admin/v1/deny-list"
    return {
        f"{card}/holder": {
            "post": _admin("Register a card to its holder", ["name", "nik", "phone"]),
            "get": _read("The card's holder (NIK's last four digits) and its cap"),
        },
        f"{card}/block": {
            "post": _admin("Block a card (cause: lost, stolen, damaged, fraud)", ["cause"])
        },
        f"{card}/replace": {
            "post": _admin("Name the card replacing a blocked one", ["new_card_number"])
        },
        f"{card}/replacement": {"get": _read("The card's replacement and when its balance moves")},
        f"{card}/passes": {
            "post": _admin(
                "Grant a pass of the fare feed priced Rp 0 (the student subscription), or sell "
                'a priced one for cash into your own drawer (source "drawer", receipt_id; '
                "optional operator_id, amount_rupiah); the next validator the card taps "
                "activates it",
                ["fare_pass_id"],
            ),
            "get": _read("The passes granted or sold to the card, waiting, activated, cancelled"),
        },
        "/admin/v1/passes/{pass_sale_id}/cancel": {
            "post": _admin(
                "Cancel a pass no card has activated: a sale's cash back from your drawer", []
            )
        },
        "/admin/v1/replacements/move-due": {
            "post": _admin("Move every balance whose waiting period is over", [])
        },
        deny: {"get": _read("Deny list entries, newest first (?unreviewed=1)")},
        f"{deny}/{{card_number}}": {"get": _read("A card's deny list entry and its history")},
        f"{deny}/{{card_number}}/review": {"post": _admin("Keep an automatic entry", [])},
        f"{deny}/{{card_number}}/lift": {
            "post": _admin("Lift an entry (fraud: a second person, a supervisor)", [])
        },
        "/admin/v1/counter/close-shift": {
            "post": _admin(
                "Close a cashier's shift: the counted drawer against the books",
                ["shift_id", "counted_rupiah"],
            )
        },
    }


def _service_paths() -> dict[str, Any]:
    """Open to anyone who can reach the service: metrics and health."""
    return {
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text"}},
            }
        },
        "/health": {"get": {"summary": "Health", "responses": {"200": {"description": "ok"}}}},
    }
