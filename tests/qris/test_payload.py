"""QRIS payloads: the public samples read, what we write reads back the same, the CRC is
CRC-16/CCITT-FALSE at every length, and malformed payloads are refused with the tag named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus_terminals import qris

# A real static QRIS (a grocery stall in Demak, Central Java; reference §2.4) and its dynamic
# version for Rp 15.000 (01 → 12, tag 54 inserted, CRC recomputed: ends in 1A02 per the reference).
demak_static = (
    "00020101021126570011ID.DANA.WWW011893600915302259148102090225914810303UMI51440014ID.CO.QRIS"
    ".WWW0215ID10200176114730303UMI5204581253033605802ID5922Warung Sayur Bu Sugeng6010Kab. Demak"
    "610559567630458C7"
)


def resealed(body_without_crc: str) -> str:
    """A payload with a correct CRC over whatever body we give it (to test the other rules)."""
    return body_without_crc + "6304" + qris.crc(body_without_crc + "6304")


def crc_bit_by_bit(data: bytes) -> int:
    """CRC-16/CCITT-FALSE from its definition: poly 0x1021, init 0xFFFF, no reflection."""
    value = 0xFFFF
    for byte in data:
        value ^= byte << 8
        for _ in range(8):
            value = ((value << 1) ^ 0x1021) if value & 0x8000 else value << 1
            value &= 0xFFFF
    return value


def test_the_public_static_sample_reads_as_its_decoded_table():
    payment = qris.read(demak_static)
    merchant = payment.merchant
    assert (payment.dynamic, payment.amount_rupiah, payment.surcharge) == (False, None, False)
    assert merchant.name == "Warung Sayur Bu Sugeng"
    assert (merchant.city, merchant.postal_code, merchant.mcc) == ("Kab. Demak", "59567", "5812")
    assert (merchant.nmid, merchant.criteria) == ("ID1020017611473", "UMI")
    assert merchant.acquirer_guid == "ID.DANA.WWW"
    assert (merchant.nns, merchant.merchant_id) == ("93600915", "022591481")  # DANA


def test_we_write_the_sample_byte_for_byte_and_its_dynamic_version_as_the_reference_says():
    merchant = qris.read(demak_static).merchant
    assert qris.write(merchant) == demak_static
    dynamic = qris.write(merchant, amount_rupiah=15_000)
    assert dynamic.endswith("61055956763041A02")
    assert "540515000" in dynamic and dynamic.startswith("000201010212")
    assert qris.read(dynamic).amount_rupiah == 15_000


def test_crc_check_value():
    assert qris.crc("123456789") == "29B1"


@given(st.binary(max_size=600).map(lambda raw: raw.decode("latin-1")))
def test_crc_is_ccitt_false_at_every_length(text):
    assert qris.crc(text) == format(crc_bit_by_bit(text.encode()), "04X")


printable = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=25
).filter(lambda text: text.strip() == text)
digits = st.text(alphabet="0123456789", min_size=1, max_size=11)
merchants = st.builds(
    qris.QrisMerchant,
    name=printable,
    city=printable.filter(lambda text: len(text) <= 15),
    mcc=st.text(alphabet="0123456789", min_size=4, max_size=4),
    nmid=st.text(alphabet="0123456789", min_size=13, max_size=13).map(lambda d: "ID" + d),
    criteria=st.sampled_from(qris.merchant_criteria),
    acquirer_guid=st.sampled_from(["ID.CO.BANKJATENG.WWW", "ID.DANA.WWW", "COM.GO-JEK.WWW"]),
    merchant_pan=st.sampled_from(["93600113", "93600915", "93600914"]).flatmap(
        lambda nns: digits.map(lambda rest: nns + rest)
    ),
    merchant_id=st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=15),
    postal_code=st.none() | st.text(alphabet="0123456789", min_size=5, max_size=5),
)
labels = st.none() | printable


@given(
    merchants,
    st.none() | st.integers(min_value=1, max_value=9_999_999_999_999),
    labels,
    labels,
    labels,
)
def test_what_we_write_reads_back_the_same(merchant, amount, reference, terminal, bill):
    payload = qris.write(
        merchant,
        amount_rupiah=amount,
        reference=reference,
        terminal_label=terminal,
        bill_number=bill,
    )
    payment = qris.read(payload)
    assert payment.merchant == merchant
    assert (payment.dynamic, payment.amount_rupiah) == (amount is not None, amount)
    assert (payment.reference, payment.terminal_label, payment.bill_number) == (
        reference,
        terminal,
        bill,
    )
    assert not payment.surcharge


@given(merchants, st.data())
def test_any_one_changed_character_is_refused(merchant, data):
    payload = qris.write(merchant, amount_rupiah=3_500, reference="INV-1")
    where = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    replacement = data.draw(st.sampled_from("0123456789AZaz .-"))
    changed = payload[:where] + replacement + payload[where + 1 :]
    if changed != payload:
        with pytest.raises(qris.QrisError):
            qris.read(changed)


body = demak_static[: -len("630458C7")]
malformed = [
    # (what is wrong, payload, the tag the error names)
    ("CRC wrong", demak_static[:-1] + "8", "63"),
    ("CRC not hex", demak_static[:-4] + "58G7", "63"),
    ("CRC missing", body, "63"),
    ("cut short inside a template", demak_static[:20], "26"),
    ("a length that is not digits", resealed(body.replace("5204", "52x4")), "52"),
    (
        "a nested element overruns its template",
        resealed(body.replace("0303UMI5144", "0309UMI5144")),
        "26",
    ),
    ("wrong currency (USD)", resealed(body.replace("5303360", "5303840")), "53"),
    ("wrong country", resealed(body.replace("5802ID", "5802SG")), "58"),
    (
        "amount with sen",
        resealed(body.replace("5802ID", "540815000.505802ID").replace("010211", "010212")),
        "54",
    ),
    (
        "amount not a number",
        resealed(body.replace("5802ID", "54031e35802ID").replace("010211", "010212")),
        "54",
    ),
    ("point of initiation unknown", resealed(body.replace("010211", "010213")), "01"),
    ("format indicator not first", resealed(body.replace("000201", "", 1) + "000201"), "00"),
    ("merchant name missing", resealed(body.replace("5922Warung Sayur Bu Sugeng", "")), "59"),
    ("MCC not digits", resealed(body.replace("52045812", "520458A2")), "52"),
    (
        "no national repository account",
        resealed(body.replace("51440014ID.CO.QRIS.WWW0215ID10200176114730303UMI", "")),
        "51",
    ),
    (
        "merchant criteria unknown",
        resealed(body.replace("0303UMI5204", "0303XYZ5204").replace("0303UMI5144", "0303XYZ5144")),
        "51.03",
    ),
    (
        "tip with a fixed fee but no fee",
        resealed(body.replace("5802ID", "5502025802ID")),
        "56",
    ),
    ("a tag twice", resealed(body.replace("5802ID", "5802ID5802ID")), "58"),
    ("too long", demak_static + "0" * 600, qris.whole_payload),
    ("empty", "", qris.whole_payload),
]


@pytest.mark.parametrize(
    ("payload", "tag"),
    [(payload, tag) for _, payload, tag in malformed],
    ids=[m[0] for m in malformed],
)
def test_malformed_payloads_are_refused_naming_the_tag(payload, tag):
    with pytest.raises(qris.QrisError) as refused:
        qris.read(payload)
    assert refused.value.tag == tag, str(refused.value)


def test_a_convenience_fee_is_read_as_a_surcharge():
    with_fee = resealed(body.replace("5802ID", "5502025603500" + "5802ID"))
    assert qris.read(with_fee).surcharge


def test_we_refuse_to_write_an_amount_that_is_not_whole_positive_rupiah():
    merchant = qris.read(demak_static).merchant
    for amount in (0, -1, True):
        with pytest.raises(qris.QrisError, match="tag 54"):
            qris.write(merchant, amount_rupiah=amount)
