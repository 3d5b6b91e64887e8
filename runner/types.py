"""Field types shared by specs: money, currencies, identifiers."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema

# The JSON Schemas below say exactly what validation accepts where pydantic's own say less
# (any string of the right length for a currency, negative and unbounded numbers for an
# amount), so a document generated from a spec promises nothing the runner then rejects.

_WHITESPACE = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # what is stripped

NonEmptyString = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 255, "pattern": f"[^{_WHITESPACE}]"}),
]
"""A trimmed string of 1 to 255 characters."""

MAX_AMOUNT = 10**11 - 1
"""The largest whole amount: 11 digits before the point (15 in all, 4 of them after it)."""

PositiveAmount = Annotated[
    Decimal,
    Field(gt=0, max_digits=15, decimal_places=4),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
                {
                    "type": "string",
                    "pattern": r"^\+?0*(?:[1-9][0-9]{0,10}(?:\.[0-9]{0,4}0*)?|\.[0-9]{0,3}[1-9]0*)$",
                },
            ],
            "description": "a decimal > 0 with at most 11 digits before the point and 4 after, best "
            'sent as a string ("19.99"); whole numbers may be JSON numbers',
        },
        mode="validation",
    ),
    WithJsonSchema(
        {"type": "string", "pattern": r"^[0-9]+(?:\.[0-9]+)?(?:E\+[0-9]+)?$", "description": "a decimal > 0"},
        mode="serialization",
    ),
]
"""A Decimal > 0. At most 15 significant digits, so a JSON number parsed as a double keeps its
exact decimal value; send money as a string (``"19.99"``) to be safe with any producer."""

# ISO 4217 active codes (2024 list).
ISO_4217 = frozenset(
    """
    aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob bov brl bsd btn
    bwp byn bzd cad cdf che chf chw clf clp cny cop cou crc cuc cup cve czk djf dkk dop dzd egp
    ern etb eur fjd fkp gbp gel ghs gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr iqd irr isk
    jmd jod jpy kes kgs khr kmf kpw krw kwd kyd kzt lak lbp lkr lrd lsl lyd mad mdl mga mkd mmk
    mnt mop mru mur mvr mwk mxn mxv myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln
    pyg qar ron rsd rub rwf sar sbd scr sdg sek sgd shp sle sll sos srd ssp stn svc syp szl thb
    tjs tmt tnd top try ttd twd tzs uah ugx usd usn uyi uyu uyw uzs ved ves vnd vuv wst xaf xag
    xau xba xbb xbc xbd xcd xcg xdr xof xpd xpf xpt xsu xts xua xxx yer zar zmw zwg zwl
    """.split()
)


def _currency(value: str) -> str:
    code = value.strip().lower()
    if code not in ISO_4217:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return code


CurrencyCode = Annotated[
    str,
    StringConstraints(min_length=3, max_length=3),
    AfterValidator(_currency),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 3,
            "maxLength": 3,
            # any case: "EUR" and "eur" alike
            "pattern": "^(?:"
            + "|".join("".join(f"[{c}{c.upper()}]" for c in code) for code in sorted(ISO_4217))
            + ")$",
        }
    ),
]
"""An ISO 4217 code, lower-cased (``"EUR"`` becomes ``"eur"``, as Stripe wants it)."""

__all__ = ["ISO_4217", "CurrencyCode", "NonEmptyString", "PositiveAmount"]
