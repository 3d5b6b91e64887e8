"""Field types shared by specs: money, currencies, identifiers."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

NonEmptyString = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
"""A trimmed string of 1 to 255 characters."""

PositiveAmount = Annotated[Decimal, Field(gt=0, max_digits=15, decimal_places=4)]
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


CurrencyCode = Annotated[str, StringConstraints(min_length=3, max_length=3), AfterValidator(_currency)]
"""An ISO 4217 code, lower-cased (``"EUR"`` becomes ``"eur"``, as Stripe wants it)."""

__all__ = ["ISO_4217", "CurrencyCode", "NonEmptyString", "PositiveAmount"]
