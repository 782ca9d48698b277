"""Phone numbers in E.164: one reading for leads' phones (intake) and the configuration's
suppressed phones, so a number suppressed as a sender types it matches the lead it was typed for.
`phonenumbers` is imported by whoever imports this module: only intake and a configuration with
suppressed phones need its large tables."""
from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import timezone as phone_timezones


@dataclass(frozen=True)
class Phone:
    e164: str
    extension: str | None
    timezone: str | None  # when the number pins it down to exactly one


def dialling_region(code: str | None) -> str | None:
    """`code` if numbers can be read in it: an ISO country or a numbering region that is none (AC,
    Ascension Island; TA, Tristan da Cunha); None for 'EU', 'XX' or nothing."""
    return code if code in phonenumbers.SUPPORTED_REGIONS else None


def normalize_phone(value: str, region: str | None) -> Phone:
    """E.164 (extension apart); a national number is read in `region`. ValueError if it cannot be."""
    text = value.strip()
    # '00' is the international prefix most of the world dials, typed after a '+' too ('+0044',
    # '+00 44'). A number the region cannot read otherwise is read with it as '+' (no national
    # number or country code starts so), so a US form's '0044 20 ...' is usable (the US dials
    # abroad with 011); tried second, so a region's own prefix ('0011' in AU) still reads first.
    abroad = re.sub(r"^\+?\s*0\s*0\s*(?=[1-9])", "+", text)
    try:
        number, kind = _parsed(text, region)
    except ValueError:
        if abroad == text:
            raise
        number, kind = _parsed(abroad, region)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if phonenumbers.is_number_type_geographical(kind, number.country_code):
        zones = phone_timezones.time_zones_for_geographical_number(number)
    else:
        zones = phone_timezones.time_zones_for_number(number)
    zone = zones[0] if len(zones) == 1 and zones[0] != "Etc/Unknown" else None
    return Phone(e164, number.extension or None, zone)


def _parsed(text: str, region: str | None) -> tuple[phonenumbers.PhoneNumber, int]:
    """The number and its type; ValueError if it is no valid number read in `region`."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        if region is None and not text.startswith("+"):
            raise ValueError("has no country code and no country to read it in") from None
        raise ValueError("is not a phone number") from None
    # The number's type once: valid means a known type (`is_valid_number`), and the time zones
    # follow from it (`time_zones_for_number` would find the region and the type again).
    kind = phonenumbers.number_type(number)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        where = f" in {region}" if region and not text.startswith("+") else ""
        raise ValueError(f"is not a valid phone number{where}")
    return number, kind
