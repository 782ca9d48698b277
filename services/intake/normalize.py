"""Lenient normalization of lead submissions: accept what real senders send, never lose a lead.

A submission is refused only when it cannot be acted on (not a JSON object, or no usable email
and no usable phone). Every other value that cannot be normalized is kept as sent and named in
a warning; fields the contract does not name are kept verbatim under `attributes`. Pure: no I/O,
`now` and the source's defaults are passed in.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, available_timezones

import pycountry
from email_validator import EmailNotValidError, validate_email

from shared.clock import as_utc
from shared.config import IntakeSource
from shared.events import Company, Consent, Contact, Intent
from shared.phones import dialling_region, normalize_phone

from .country_names import NAMES as COUNTRY_NAMES


@dataclass(frozen=True)
class Issue:
    """A value kept as sent (or dropped, for typed fields) because it could not be normalized; or,
    not `kept_as_sent`, a note on a value that was read ('several values given; the first is used'):
    such a value still identifies the lead and fills its field."""

    field: str
    message: str
    value: Any = None
    kept_as_sent: bool = True

    def warning(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def quality(self) -> dict[str, Any]:
        quality = {"field": self.field, "message": self.message, "value": self.value}
        return quality if self.kept_as_sent else {**quality, "kept_as_sent": False}

    @classmethod
    def of(cls, quality: dict[str, Any]) -> Issue:
        """The issue a `data_quality` item (as `quality` wrote it) stands for."""
        return cls(quality.get("field", ""), quality.get("message", ""), quality.get("value"),
                   quality.get("kept_as_sent", True))


def flawed(issues: list[Issue]) -> set[str]:
    """The fields holding a value kept as sent: they identify nobody and count as missing."""
    return {i.field for i in issues if i.kept_as_sent}


@dataclass
class Submission:
    """A normalized submission: the contract's fields, the rest verbatim, and what was wrong."""

    contact: Contact
    company: Company
    intent: Intent
    consent: Consent
    external_id: str | None = None
    submitted_at: datetime | None = None
    score: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    given: set[str] = field(default_factory=set)  # dotted names of the fields the sender gave

    @property
    def warnings(self) -> list[dict[str, str]]:
        return [i.warning() for i in self.issues]

    @property
    def data_quality(self) -> list[dict[str, Any]]:
        return [i.quality() for i in self.issues]

    def snapshot(self) -> dict[str, Any]:
        """The normalized fields as JSON (what a merge or an update carries)."""
        return {
            "external_id": self.external_id,
            "submitted_at": self.submitted_at.astimezone(UTC).isoformat() if self.submitted_at else None,
            "score": self.score,
            "contact": self.contact.model_dump(mode="json", exclude_none=True),
            "company": self.company.model_dump(mode="json", exclude_none=True),
            "intent": self.intent.model_dump(mode="json", exclude_none=True),
            "consent": self.consent.model_dump(mode="json", exclude_none=True),
            "attributes": self.attributes,
        }


class Refused(ValueError):
    """The submission cannot be acted on; `errors` name the fields ([{field, message}])."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


# ---- text -----------------------------------------------------------------------------------


def clean_text(value: Any) -> Any:
    """Make text storable in Postgres (no NUL, no lone surrogates), however deep in the value."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)  # jsonb and every consumer read integers as 64-bit at most
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def text_repairs(value: Any, path: str = "") -> list[Issue]:
    """Where `clean_text` changes text (a NUL removed, a lone surrogate replaced), by the field's
    dotted path as cleaned: the lead keeps the cleaned text and its warnings say so (a value not
    kept as sent, and not refused either)."""
    found: list[Issue] = []
    if isinstance(value, str):
        if repair := _text_repair(value):
            found.append(Issue(path, repair, clean_text(value), kept_as_sent=False))
    elif isinstance(value, dict):
        for key, item in value.items():
            name = clean_text(str(key))
            at = f"{path}.{name}" if path else name
            if repair := _text_repair(str(key)):
                found.append(Issue(at, f"field name: {repair}", kept_as_sent=False))
            found += text_repairs(item, at)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += text_repairs(item, f"{path}[{index}]")
    return found


def _text_repair(text: str) -> str | None:
    repairs = []
    if "\x00" in text:
        repairs.append("NUL characters removed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        repairs.append("characters that are not valid Unicode (lone surrogates) replaced with '?'")
    return "; ".join(repairs) or None


_INVISIBLE = re.compile("[\u200b-\u200d\u2060\ufeff]")  # zero-width spaces and joiners, BOM


@lru_cache(maxsize=4096)  # field names repeat from lead to lead
def snake(name: str) -> str:
    """'firstName', 'First Name', 'first-name' -> 'first_name' (to match field aliases)."""
    # Form labels as keys: 'Email *', 'Email (required)', 'Your Email', 'Tel.', a CSV's BOM.
    name = re.sub(r"\([^()]*\)|\[[^\[\]]*\]", " ", _INVISIBLE.sub("", name)).strip(" \t*:?.")
    name = re.sub(r"(?i)^your[\s_\-]+", "", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[\s\-.]+", "_", name).lower()


def fold(text: str) -> str:
    """Casefolded, accents and punctuation dropped: the key for name lookups."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"[\W_]+", " ", text).strip()


# ---- email ----------------------------------------------------------------------------------


# Plain ASCII addresses (nearly all) are checked by this pattern alone; anything else (Unicode,
# quoted local parts, special-use domains like .test) goes through the full validator.
_PLAIN_EMAIL = re.compile(
    r"(?=.{1,254}$)(?=[^@]{1,64}@)[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?!(?:local|localhost|test|invalid|onion|arpa|internal)$)"
    r"[a-z]{2,63}"
)


def normalize_email(value: str) -> str:
    """Lower-cased address; 'mailto:' (with its '?subject=...') and 'Name <addr>' wrappers, a
    trailing full stop or separator and spaces around the '@' dropped; of several addresses in
    one field ('a@x.com; b@y.com', as CRM exports join them) the first usable. ValueError if none."""
    text = value.strip()
    if not text.isascii():  # a full-width '＠' (CJK input), a BOM or zero-width space pasted along
        text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).strip()
    match = re.search(r"<([^<>]+)>", text)
    if match:
        text = match.group(1)
    if re.match(r"mailto:", text, flags=re.IGNORECASE):
        text = unquote(text[len("mailto:"):].split("?", 1)[0])
    # A spreadsheet's text apostrophe, brackets, a trailing '(Name)' comment or separator.
    text = re.sub(r"\s*\([^()@]*\)$", "", text.lstrip("'").strip().strip("[]"))
    text = re.sub(r"\s*@\s*", "@", text).strip().rstrip(".,;:").strip()
    if text.count("@") > 1 and not text.startswith('"'):  # a quoted local part may hold an '@'
        parts = [part for part in re.split(r"[,;\s]+", text) if part]
        if len(parts) == 1:  # 'ada@@acme.com': one address, unusable (read again, it recursed forever)
            raise ValueError("not a usable email address (more than one '@')")
        return _first_read(parts, normalize_email)
    if _PLAIN_EMAIL.fullmatch(text.lower()):
        return text.lower()
    try:
        # A quoted local part ('"john doe"@example.com') is rare but deliverable: refusing it would
        # lose the lead. Bracketed IP literals stay refused (nobody is reached at one).
        result = validate_email(text, check_deliverability=False, allow_quoted_local=True)
    except EmailNotValidError as exc:
        raise ValueError(f"not a usable email address ({exc})") from None
    return result.normalized.lower()


# ---- countries ------------------------------------------------------------------------------

COUNTRY_ALIASES = {
    "uk": "GB", "u k": "GB", "great britain": "GB", "britain": "GB", "england": "GB",
    "scotland": "GB", "wales": "GB", "northern ireland": "GB", "el": "GR", "usa": "US",
    "u s": "US", "u s a": "US", "us of a": "US", "america": "US", "united states of america": "US",
    "holland": "NL", "the netherlands": "NL", "korea": "KR", "south korea": "KR",
    "republic of korea": "KR", "north korea": "KP", "russia": "RU", "czech republic": "CZ",
    "ivory coast": "CI", "uae": "AE", "emirates": "AE", "vietnam": "VN", "burma": "MM",
    "macedonia": "MK", "swaziland": "SZ", "turkey": "TR", "taiwan": "TW", "iran": "IR",
    "syria": "SY", "laos": "LA", "bolivia": "BO", "venezuela": "VE", "tanzania": "TZ",
    "moldova": "MD", "palestine": "PS", "vatican": "VA", "brunei": "BN", "cape verde": "CV",
    "east timor": "TL", "congo": "CG", "drc": "CD", "prc": "CN", "mainland china": "CN",
    "hong kong": "HK", "macau": "MO", "the philippines": "PH", "ksa": "SA",
}


@lru_cache(maxsize=4096)
def normalize_country(value: str) -> str:
    """ISO 3166-1 alpha-2 from a code (alpha-2/3), an English or own-language name or a common
    alias ('de', 'DEU', 'Germany', 'Deutschland', 'UK'). ValueError if unknown."""
    key = fold(value)
    if not key:
        raise ValueError("empty")
    if key == "n a" and not value.strip().isalpha():  # 'N/A', 'n.a.': not given, not Namibia
        raise ValueError("is not a country (not applicable?); kept as sent")
    if key in COUNTRY_ALIASES:
        return COUNTRY_ALIASES[key]
    if key in COUNTRY_NAMES:
        return COUNTRY_NAMES[key]
    compact = key.replace(" ", "")
    if len(compact) in (2, 3) and compact.isalpha():
        found = pycountry.countries.get(alpha_2=compact.upper()) if len(compact) == 2 else (
            pycountry.countries.get(alpha_3=compact.upper()))
        if found is not None:
            return found.alpha_2
    try:
        return pycountry.countries.lookup(value.strip()).alpha_2
    except LookupError:
        raise ValueError(f"{value!r} is not a known country; kept as sent") from None


# ---- phones ---------------------------------------------------------------------------------


_PHONE_SEPARATORS = re.compile(r"\s*(?:[,;/|\n]|\bor\b)\s*", flags=re.IGNORECASE)


_T = TypeVar("_T")


def _first_read(parts: list[str], read: Callable[[str], _T]) -> _T:
    """Of several values in one field (addresses, numbers), the first `read` takes; its ValueError
    for the first one when none is usable."""
    problem: ValueError | None = None
    for part in parts:
        try:
            return read(part)
        except ValueError as exc:
            problem = problem or exc
    raise problem or ValueError("holds no value")


def dialable(value: str) -> bool:
    """A number a person could still dial, even if it cannot be normalized."""
    return 7 <= sum(c.isdigit() for c in value) <= 17


# ---- languages and time zones ---------------------------------------------------------------

LANGUAGE_NAMES = {
    "deutsch": "de", "espanol": "es", "castellano": "es", "francais": "fr", "italiano": "it",
    "portugues": "pt", "nederlands": "nl", "polski": "pl", "svenska": "sv", "norsk": "no",
    "dansk": "da", "suomi": "fi", "cestina": "cs", "magyar": "hu", "turkce": "tr",
    "русский": "ru", "日本語": "ja", "中文": "zh", "한국어": "ko", "chinese": "zh",
    "mandarin": "zh", "brazilian portuguese": "pt-BR", "american english": "en-US",
    "british english": "en-GB",
}


@lru_cache(maxsize=2048)
def normalize_language(value: str) -> str:
    """A BCP 47 tag in canonical case from any common spelling: 'en-us', 'EN_US', 'zh_CN',
    'en_US.UTF-8', 'English', 'Deutsch', 'eng'. ValueError if unknown."""
    text = value.strip().split(".")[0].split("@")[0]
    key = fold(text)
    if key in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[key]
    parts = [p for p in re.split(r"[-_\s]+", text) if p]
    if parts and re.fullmatch(r"[A-Za-z]{2,3}", parts[0]) and all(
        re.fullmatch(r"[A-Za-z]{4}|[A-Za-z]{2}|\d{3}", p) for p in parts[1:]
    ):
        primary = parts[0].lower()
        if len(primary) == 3:
            found = pycountry.languages.get(alpha_3=primary)
            if found is None:
                raise ValueError(f"{value!r} is not a known language; kept as sent")
            primary = getattr(found, "alpha_2", primary)
        elif pycountry.languages.get(alpha_2=primary) is None:
            raise ValueError(f"{value!r} is not a known language; kept as sent")
        rest = [p.title() if len(p) == 4 else p.upper() for p in parts[1:]]
        return "-".join([primary, *rest])
    try:
        found = pycountry.languages.lookup(text)
    except LookupError:
        raise ValueError(f"{value!r} is not a known language; kept as sent") from None
    return getattr(found, "alpha_2", None) or found.alpha_3


# Abbreviations and the names calendar tools use; ambiguous ones (IST, CST) take the common reading.
ZONE_ALIASES = {
    "utc": "UTC", "gmt": "UTC", "z": "UTC", "zulu": "UTC", "est": "America/New_York",
    "edt": "America/New_York", "et": "America/New_York", "eastern": "America/New_York",
    "cst": "America/Chicago", "cdt": "America/Chicago", "ct": "America/Chicago",
    "central": "America/Chicago", "mst": "America/Denver", "mdt": "America/Denver",
    "mt": "America/Denver", "mountain": "America/Denver", "pst": "America/Los_Angeles",
    "pdt": "America/Los_Angeles", "pt": "America/Los_Angeles", "pacific": "America/Los_Angeles",
    "akst": "America/Anchorage", "akdt": "America/Anchorage", "hst": "Pacific/Honolulu",
    "ast": "America/Halifax", "nst": "America/St_Johns", "bst": "Europe/London",
    "wet": "Europe/Lisbon", "west": "Europe/Lisbon", "cet": "Europe/Paris", "cest": "Europe/Paris",
    "met": "Europe/Paris", "eet": "Europe/Athens", "eest": "Europe/Athens", "msk": "Europe/Moscow",
    "ist": "Asia/Kolkata", "pkt": "Asia/Karachi", "sgt": "Asia/Singapore", "hkt": "Asia/Hong_Kong",
    "jst": "Asia/Tokyo", "kst": "Asia/Seoul", "awst": "Australia/Perth",
    "acst": "Australia/Adelaide", "aest": "Australia/Sydney", "aedt": "Australia/Sydney",
    "nzst": "Pacific/Auckland", "nzdt": "Pacific/Auckland", "brt": "America/Sao_Paulo",
    "art": "America/Argentina/Buenos_Aires", "sast": "Africa/Johannesburg",
    "eastern time": "America/New_York", "central time": "America/Chicago",
    "mountain time": "America/Denver", "pacific time": "America/Los_Angeles",
    "eastern time us canada": "America/New_York", "central time us canada": "America/Chicago",
    "mountain time us canada": "America/Denver", "pacific time us canada": "America/Los_Angeles",
    "eastern standard time": "America/New_York", "central standard time": "America/Chicago",
    "mountain standard time": "America/Denver", "pacific standard time": "America/Los_Angeles",
    "gmt standard time": "Europe/London", "w europe standard time": "Europe/Berlin",
    "central european time": "Europe/Paris", "central european standard time": "Europe/Warsaw",
    "romance standard time": "Europe/Paris", "india standard time": "Asia/Kolkata",
    "china standard time": "Asia/Shanghai", "tokyo standard time": "Asia/Tokyo",
    "aus eastern standard time": "Australia/Sydney", "arizona": "America/Phoenix",
    "hawaii": "Pacific/Honolulu", "alaska": "America/Anchorage",
}


@lru_cache(maxsize=1)
def _zones_by_key() -> dict[str, str]:
    zones = {}
    for name in available_timezones():
        zones[name.casefold()] = name
        city = fold(name.rsplit("/", 1)[-1])
        zones.setdefault("city:" + city, name)
    return zones


@lru_cache(maxsize=2048)
def normalize_timezone(value: str) -> str:
    """An IANA name from an IANA name in any case, a common abbreviation ('PST', 'CET'), a
    calendar tool's name ('Eastern Time (US & Canada)'), a city, or 'UTC+2'. ValueError if not."""
    text = value.strip()
    zones = _zones_by_key()
    key = fold(text)
    if key in ZONE_ALIASES:  # first: tzdata's legacy 'EST' or 'CET' have no daylight saving time
        return ZONE_ALIASES[key]
    if text.casefold() in zones:
        return zones[text.casefold()]
    offset = re.fullmatch(r"(?:utc|gmt)?\s*([+-])\s*(\d{1,2})(?::?00)?", text.casefold())
    if offset:
        hours = int(offset.group(2))
        if hours == 0:
            return "UTC"
        if hours <= 14:
            # Etc/GMT zones have POSIX signs: UTC+2 is Etc/GMT-2.
            return f"Etc/GMT{'-' if offset.group(1) == '+' else '+'}{hours}"
    if "city:" + key in zones:
        return zones["city:" + key]
    raise ValueError(f"{value!r} is not a known time zone (use an IANA name like 'Europe/Berlin')")


# ---- timestamps, numbers, company size ------------------------------------------------------

_LOCAL_FORMATS = (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M",
    "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y %I:%M %p", "%m/%d/%Y %I:%M:%S %p",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y",
)


def parse_timestamp(value: Any, zone: str, *, zone_named: bool = True) -> tuple[datetime, bool]:
    """(aware datetime, whether the zone was assumed). ISO 8601, RFC 2822, a few common local
    formats (`zone_named`: also followed by a zone's name), or Unix seconds/milliseconds.
    Without an offset the time is read in `zone`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC), False
        except (OverflowError, OSError, ValueError):
            raise ValueError("is not a timestamp") from None
    if not isinstance(value, str):
        raise ValueError("is not a timestamp")
    text = value.strip()
    parsed: datetime | None = None
    if re.fullmatch(r"\d{10}(\.\d+)?|\d{13}", text):
        return parse_timestamp(float(text), zone)
    if js := _JS_DATE.fullmatch(text):  # JavaScript's Date.toString(): the zone's name in brackets
        text = " ".join(js.groups())
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
            if parsed.tzinfo is None:  # '-0000' (UTC, RFC 5322) or a zone's name it does not know
                if text.endswith("-0000"):
                    parsed = parsed.replace(tzinfo=UTC)
                elif zone_named and (named := _in_named_zone(re.sub(r"^[A-Za-z]{3},\s*", "", text))):
                    return named, False
        except (TypeError, ValueError, IndexError):
            for fmt in _LOCAL_FORMATS:
                try:
                    parsed = datetime.strptime(text, fmt)
                    break
                except ValueError:
                    continue
    if parsed is None:
        named = _in_named_zone(text) if zone_named else None
        if named is not None:
            return named, False
        raise ValueError("is not a timestamp (use ISO 8601 with an offset, e.g. 2026-11-22T10:00:00Z)")
    assumed = parsed.tzinfo is None
    if assumed:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone))
    as_utc(parsed)  # an instant the wire (UTC) can carry, or a ValueError like any unreadable one
    return parsed, assumed


_JS_DATE = re.compile(r"[A-Za-z]{3} ([A-Za-z]{3} \d{1,2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})(?: \(.*\))?")


def _in_named_zone(text: str) -> datetime | None:
    """A local time followed by its zone's name ('2026-11-22 10:00:00 UTC', as Rails writes it;
    '10:00 PST'; '... Europe/Berlin'), read in that zone; None if it is not one."""
    match = re.fullmatch(r"(.+?)\s+([A-Za-z][A-Za-z_/+\-]*)", text)
    if match is None:
        return None
    try:
        zone = normalize_timezone(match.group(2))
        parsed, assumed = parse_timestamp(match.group(1), zone, zone_named=False)  # one name, at the end
    except ValueError:
        return None
    return parsed if assumed else None  # '...+01:00 UTC' names two zones: not read


def parse_number(value: Any) -> float:
    """A number, or a numeric string ('85', ' 85.5 ', '85%', '8,5', '1,200'). ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().rstrip("%").strip().replace(" ", "")
        if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
            text = text.replace(",", "")
        elif re.fullmatch(r"-?\d+,\d+", text):
            text = text.replace(",", ".")
        try:
            number = float(text)
        except ValueError:
            raise ValueError("is not a number") from None
    else:
        raise ValueError("is not a number")
    if not math.isfinite(number):
        raise ValueError("is not a finite number")
    return number


SIZE_BANDS = ((1, 10), (11, 50), (51, 200), (201, 500), (501, 1000), (1001, 5000), (5001, 10000))


@dataclass(frozen=True)
class Size:
    band: str
    employees: int | None
    low: int
    high: int | None


def band_for(employees: int) -> str:
    for low, high in SIZE_BANDS:
        if employees <= high:
            return f"{low}-{high}"
    return "10001+"


# No company employs more: a larger "head count" is not one (and past 64 bits it could not be
# stored as the integer `employees`; a 400-digit '999…k' was an infinite float and a 500).
MAX_HEAD_COUNT = 10**9


def _count(text: str) -> int:
    text = text.replace(" ", "").lower()
    scale = {"k": 1000, "m": 1_000_000}.get(text[-1:], 1)
    text = text.rstrip("km")
    if re.fullmatch(r"\d{1,3}(?:([.,])\d{3})(?:\1\d{3})*", text):
        text = re.sub(r"[.,]", "", text)  # "1,200", "1.200": thousands separators
    else:  # "250.0", "1,5k": a decimal point (a head count written 250.0 was read as 2,500)
        text = text.replace(",", ".")
    number = float(text) * scale
    if not number <= MAX_HEAD_COUNT or number != int(number):  # NaN, infinity and 1.5 people too
        raise ValueError("is not a head count")
    return int(number)


def normalize_size(value: Any) -> Size:
    """A head count or a band ('201-500', '1,001 - 5,000 employees', '10k+', '<10') -> both."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 1 <= value <= MAX_HEAD_COUNT or value != int(value):
            raise ValueError("is not a head count")
        n = int(value)
        low, _, high = band_for(n).partition("-")
        return Size(band_for(n), n, int(low.rstrip("+")), int(high) if high else None)
    if not isinstance(value, str):
        raise ValueError("is not a head count or a band like '201-500'")
    return _size_of_text(value)


@lru_cache(maxsize=1024)  # senders repeat their bands and head counts
def _size_of_text(value: str) -> Size:
    text = re.sub(r"(?i)\s*(employees?|people|staff|emps?|ppl)\b\.?", "", value.strip()).strip()
    num = r"(\d[\d,. ]*[kKmM]?)"
    try:
        if re.fullmatch(num, text):
            return normalize_size(_count(text))
        if m := re.fullmatch(num + r"\s*(?:-|–|to)\s*" + num, text):
            low, high = _count(m.group(1)), _count(m.group(2))
            if 0 < low <= high:
                return Size(f"{low}-{high}", None, low, high)
        if m := re.fullmatch(num + r"\s*\+|(?i:over|more than|above)\s*" + num, text):
            low = _count(m.group(1) or m.group(2))
            return Size(f"{low}+", None, low, None)
        if m := re.fullmatch(r"(?:<|(?i:under|less than|fewer than))\s*" + num, text):
            high = _count(m.group(1)) - 1
            if high >= 1:
                return Size(f"1-{high}", None, 1, high)
        if fold(text) in ("self employed", "just me", "solo", "freelancer", "1 person"):
            return normalize_size(1)
    except ValueError:
        pass
    raise ValueError("is not a head count or a band like '201-500'; kept as sent")


BOOLEAN_WORDS = {
    "true": True, "yes": True, "y": True, "1": True, "on": True, "checked": True, "agree": True,
    "agreed": True, "opt in": True, "opted in": True, "granted": True, "accepted": True,
    "false": False, "no": False, "n": False, "0": False, "off": False, "unchecked": False,
    "opt out": False, "opted out": False, "denied": False, "declined": False, "": False,
    "subscribed": True, "unsubscribed": False, "do not contact": False, "revoked": False, "withdrawn": False,
}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and fold(value) in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[fold(value)]
    raise ValueError("is not yes or no")


# ---- intent ---------------------------------------------------------------------------------

# Canonical intent types, strongest first, with the spellings senders use for them.
BUILTIN_INTENTS: dict[str, list[str]] = {
    "demo_request": ["demo", "request demo", "request a demo", "book a demo", "book demo",
                     "schedule a demo", "schedule demo", "get a demo", "see a demo", "live demo",
                     "product demo", "demo request", "demo requested", "request a meeting"],
    "contact_sales": ["contact sales", "talk to sales", "speak to sales", "sales inquiry",
                      "sales enquiry", "sales", "contact us", "contact me", "call me",
                      "callback", "call back", "request a call", "request callback"],
    "quote_request": ["quote", "request a quote", "get a quote", "rfq", "request quote"],
    "pricing": ["pricing", "pricing request", "request pricing", "price"],
    "trial": ["free trial", "start trial", "start free trial", "trial signup", "trial sign up",
              "signup", "sign up", "free account"],
    "webinar": ["webinar", "webinar registration", "webinar attendee", "webinar attended",
                "event registration", "event", "workshop"],
    "content_download": ["download", "content download", "ebook", "e book", "whitepaper",
                         "white paper", "guide", "case study", "report", "datasheet"],
    "newsletter": ["newsletter", "subscribe", "newsletter signup", "blog subscription"],
}


def slug(text: str) -> str:
    return fold(snake(text)).replace(" ", "_")


@lru_cache(maxsize=64)
def _intent_table(aliases: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[tuple[str, str], ...]:
    """(alias slug, canonical type) pairs: configured aliases first, then the built-in ones."""
    pairs = [(canonical, canonical) for canonical, _ in aliases]
    pairs += [(slug(alias), canonical) for canonical, spellings in aliases for alias in spellings]
    for canonical, spellings in BUILTIN_INTENTS.items():
        pairs.append((canonical, canonical))
        pairs += [(slug(s), canonical) for s in spellings]
    return tuple(pairs)


def classify_intent(value: str, aliases: dict[str, list[str]] | None = None) -> str | None:
    """The canonical intent type of a free-text one ('Demo Request', 'Book a demo!',
    'Request-a-demo form'), matched case-, space- and punctuation-insensitively; None if unknown."""
    return _classify(value, tuple((k, tuple(v)) for k, v in (aliases or {}).items()))


@lru_cache(maxsize=4096)  # senders repeat their few spellings
def _classify(value: str, aliases: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    table = _intent_table(aliases)
    key = slug(value)
    for alias, canonical in table:
        if key == alias:
            return canonical
    padded = f"_{key}_"
    for alias, canonical in table:  # a known phrase inside longer text; strongest type first
        at = padded.find(f"_{alias}_")
        if at >= 0 and not _NEGATIONS.intersection(padded[:at].split("_")[-_NEGATION_REACH:]):
            return canonical
    return None


# A phrase a few words after one of these is not asked for: "Not interested in a demo" is no demo
# request (it was tier A, with a 5-minute SLA). Words as `slug` leaves them ("don't": don, t).
_NEGATIONS = frozenset({"not", "no", "never", "without", "don", "dont", "doesn", "didn", "won", "nicht", "kein",
                        "keine", "pas", "sans"})
_NEGATION_REACH = 4


# ---- the submission -------------------------------------------------------------------------

# snake_case spellings senders use -> the contract's name, per object.
CONTACT_FIELDS = {
    "first_name": "first_name", "firstname": "first_name", "first": "first_name",
    "given_name": "first_name", "fname": "first_name",
    "last_name": "last_name", "lastname": "last_name", "last": "last_name", "surname": "last_name",
    "family_name": "last_name", "lname": "last_name",
    "name": "name", "full_name": "name", "fullname": "name", "contact_name": "name",
    "email": "email", "email_address": "email", "e_mail": "email", "mail": "email",
    "work_email": "email", "business_email": "email", "emailaddress": "email", "contact_email": "email",
    "company_email": "email", "business_email_address": "email", "work_email_address": "email",
    "e_mail_address": "email", "e_mail_adresse": "email", "email_adresse": "email",
    "phone": "phone", "phone_number": "phone", "phonenumber": "phone", "mobile": "phone",
    "mobile_phone": "phone", "mobile_number": "phone", "telephone": "phone", "tel": "phone",
    "cell": "phone", "cell_phone": "phone", "work_phone": "phone", "business_phone": "phone",
    "phone_mobile": "phone", "telephone_number": "phone", "direct_phone": "phone", "phone_no": "phone",
    "workphone": "phone", "contact_number": "phone", "cellphone": "phone", "mobilephone": "phone",
    "country": "country", "country_code": "country",
    "timezone": "timezone", "time_zone": "timezone", "tz": "timezone",
    "language": "language", "lang": "language", "locale": "language", "preferred_language": "language",
    "title": "title", "job_title": "title", "jobtitle": "title", "position": "title",
}
COMPANY_FIELDS = {
    "name": "name", "company_name": "name", "company": "name", "organization": "name",
    "organisation": "name", "org": "name", "account_name": "name",
    "domain": "domain", "website": "website", "url": "website", "web": "website",
    "company_website": "website",
    "size": "size", "employees": "size", "employee_count": "size", "employees_count": "size",
    "company_size": "size", "headcount": "size", "num_employees": "size",
    "number_of_employees": "size", "no_of_employees": "size",
    "industry": "industry", "sector": "industry", "vertical": "industry",
    "country": "country", "country_code": "country", "hq_country": "country",
}
INTENT_FIELDS = {
    "type": "type", "intent": "type", "intent_type": "type", "form_type": "type",
    "request_type": "type", "inquiry_type": "type", "enquiry_type": "type", "kind": "type",
    "product": "product", "product_interest": "product", "interest": "product",
    "message": "message", "comment": "message", "comments": "message", "notes": "message",
    "question": "message", "description": "message",
}
# Flat top-level fields many form builders send instead of nested objects.
FLAT_FIELDS = {
    **{k: ("contact", v) for k, v in CONTACT_FIELDS.items()
       if k not in ("name", "country", "country_code", "first", "last", "mail", "title", "position")},
    "title": ("contact", "title"), "job_title": ("contact", "title"),
    "full_name": ("contact", "name"),
    "company": ("company", "name"), "company_name": ("company", "name"),
    "company_size": ("company", "size"), "employees": ("company", "size"),
    "employee_count": ("company", "size"), "number_of_employees": ("company", "size"),
    "num_employees": ("company", "size"), "numemployees": ("company", "size"), "website": ("company", "website"),
    "company_website": ("company", "website"), "industry": ("company", "industry"),
    "country": ("contact", "country"),
    "intent_type": ("intent", "type"), "form_type": ("intent", "type"),
    "request_type": ("intent", "type"), "message": ("intent", "message"),
    "comments": ("intent", "message"), "product": ("intent", "product"),
}
TOP_FIELDS = {"source", "external_id", "submitted_at", "score", "contact", "company", "intent",
              "consent", "attributes", "custom_fields"}
TOP_ALIASES = {"externalid": "external_id", "id": "external_id", "lead_id": "external_id",
               "created_at": "submitted_at", "submitted": "submitted_at", "timestamp": "submitted_at",
               "created_time": "submitted_at", "create_time": "submitted_at",
               "lead_score": "score", "hubspotscore": "score", "custom": "custom_fields"}


_ABSENT = object()


def _free_name(target: dict[str, Any], name: str, fits: Callable[[Any], bool]) -> str:
    """`name`, else the first of 'name_2', 'name_3'... that is absent from `target` or `fits`."""
    candidate, n = name, 1
    while (existing := target.get(candidate, _ABSENT)) is not _ABSENT and not fits(existing):
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _put(target: dict[str, Any], name: str, value: Any) -> None:
    existing = target.get(name, _ABSENT)
    if isinstance(existing, dict) and isinstance(value, dict):
        merged = target[name] = dict(existing)  # a copy: the kept value may be in use elsewhere
        for key, item in value.items():
            _put(merged, key, item)
        return
    target[_free_name(target, name, lambda kept: kept == value)] = value


def _unusable(fields: dict[str, str], key: Any, item: Any) -> bool:
    """An email that has no @ or a phone with no number in it, given under one spelling: another
    spelling of the field ('email': 'n/a', 'work_email': 'ada@acme.com') is read first, else the
    junk one was used, the usable one only kept, and the lead refused. (A stable sort: the
    sender's order otherwise.)"""
    return _junk(fields.get(snake(str(key))), item)


def _scalars(value: Any) -> bool:
    """A non-empty list of text or numbers: how some tools send every field (Unbounce: ["ada@..."])."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)  # what `_Reader.text` reads


def _junk(target: str | None, item: Any) -> bool:
    """`item` given for the contract's field `target` is an email or phone nobody can use."""
    if target not in ("email", "phone"):
        return False
    first = item[0] if isinstance(item, list) and item else item
    if isinstance(first, bool) or not isinstance(first, (str, int, float)):
        return True
    if target == "phone":
        return not dialable(str(first))
    local, _, domain = str(first).strip().rpartition("@")  # 'ada@' or '@acme.com' reach nobody
    return not local.strip() or "." not in domain


def _unfilled(pair: tuple[Any, Any]) -> bool:
    """A top-level field given empty (null, '') or, for an email or phone, unusable."""
    key, value = pair
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    name = snake(str(key))
    flat = FLAT_FIELDS.get(name)
    return flat is not None and _junk(flat[1], value)


class _Reader:
    """Collects issues and unknown fields while the submission is read."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.attributes: dict[str, Any] = {}
        self.given: set[str] = set()
        self.read_from: dict[str, tuple[str, Any]] = {}  # "contact.email" -> (the key read, its value)
        # "contact.email" -> (where in the body the value used was sent, as sent): nested or flat
        self.sent_at: dict[str, tuple[tuple[str, ...], Any]] = {}

    def keep(self, path: tuple[str, ...], value: Any) -> None:
        """Keep an unknown field verbatim, nested under attributes as it was in the body. A name
        already holding another value (a top-level field and a custom field of the same name, a
        second spelling of one field) is never overwritten: objects merge, and a value that
        cannot merge takes the name with a suffix ('plan_2')."""
        target = self.attributes
        for part in path[:-1]:
            part = _free_name(target, part, lambda existing: isinstance(existing, dict))
            target = target.setdefault(part, {})
        _put(target, path[-1], value)

    def keep_as_sent(self, field_name: str, text: str) -> None:
        """Keep a field of several values, of which the first usable was read, where the sender put
        it (the others are not lost); one sent as a list is kept already."""
        section, _, name = field_name.partition(".")
        path, item = self.sent_at.get(field_name, ((section, name), text))
        if not isinstance(item, list):
            self.keep(path, item)

    def warn(self, field_name: str, message: str, value: Any = None, *, kept_as_sent: bool = True) -> None:
        self.issues.append(Issue(field_name, message, value, kept_as_sent))

    def normalized(self, out: dict[str, Any], key: str, field_name: str,
                   normalize: Callable[[Any], Any], value: Any) -> bool:
        """`out[key]` = the normalized value; one that cannot be read is kept as sent, with a warning."""
        try:
            out[key] = normalize(value)
            return True
        except ValueError as exc:
            out[key] = value
            self.warn(field_name, str(exc), value)
            return False

    def text(self, name: str, value: Any) -> str | None:
        """A scalar as stripped text; '' and null mean "not given"."""
        if value is None:
            return None
        if isinstance(value, bool):
            self.warn(name, "is a boolean, expected text; kept as sent", value)
            return str(value).lower()
        if isinstance(value, float) and value == int(value) and abs(value) < 1e16:
            value = int(value)
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, list) and value and all(isinstance(v, (str, int)) for v in value):
            if len(value) > 1:
                self.warn(name, "several values given; the first is used, all kept in attributes", value,
                          kept_as_sent=False)
            return self.text(name, value[0])
        if not isinstance(value, str):
            raise TypeError
        return value.strip() or None

    def section(self, name: str, value: Any, fields: dict[str, str]) -> dict[str, Any]:
        """Read one nested object: known fields by their aliases, the rest into attributes."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.warn(name, "is not an object; kept in attributes", value)
            self.keep((name,), value)
            return {}
        out: dict[str, Any] = {}
        for key, item in sorted(value.items(), key=lambda pair: _unusable(fields, *pair)):
            target = fields.get(snake(str(key)))
            if target is None or target in out:
                self.keep((name, str(key)), item)
                continue
            try:
                text = self.text(f"{name}.{target}", item)
            except TypeError:
                self.warn(f"{name}.{target}", "is not a text value; kept in attributes", item)
                self.keep((name, str(key)), item)
                continue
            if text is not None:
                out[target] = text
                self.given.add(f"{name}.{target}")
                self.read_from[f"{name}.{target}"] = (str(key), item)
                self.sent_at[f"{name}.{target}"] = ((name, str(key)), item)
            if isinstance(item, list) and len(item) > 1:
                self.keep((name, str(key)), item)
        return out


def read_submission(body: Any, source: IntakeSource, aliases: dict[str, list[str]] | None = None,
                    *, partial: bool = False) -> Submission:
    """Normalize a submission leniently. Raises `Refused` only when the lead cannot be acted on:
    not an object, or (unless `partial`, for PATCH) no usable email and no usable phone."""
    if not isinstance(body, dict):
        raise Refused([{"field": "(body)", "message": "must be a JSON object"}])
    r = _Reader()
    try:
        cleaned = clean_text(body)
        if cleaned != body:  # rare: only then walk the body again to name what changed
            r.issues += text_repairs(body)
    except RecursionError:
        raise Refused([{"field": "(body)", "message": "is nested too deeply"}]) from None
    body = cleaned
    raw: dict[str, Any] = {"contact": {}, "company": {}, "intent": {}}
    flat: dict[str, dict[str, Any]] = {"contact": {}, "company": {}, "intent": {}}
    top: dict[str, Any] = {}
    # A spelling with nothing usable ('email': '' or 'n/a', then 'work_email': 'ada@acme.com', as
    # CRM exports send unfilled fields) is read after the others, so a usable one is not shadowed
    # and kept aside (the lead was refused). A stable sort: the sender's order otherwise.
    for key, value in sorted(body.items(), key=_unfilled):
        name = snake(str(key))
        name = TOP_ALIASES.get(name, name)
        if name in TOP_FIELDS and name not in top:
            top[name] = value
        elif name in FLAT_FIELDS and (not isinstance(value, (dict, list)) or _scalars(value)) and (
                FLAT_FIELDS[name][1] not in flat[FLAT_FIELDS[name][0]]):
            section, target = FLAT_FIELDS[name]
            flat[section][target] = (str(key), value)
        else:  # unknown, or a second spelling of a flat field ('Email' after 'email'): kept
            r.keep((str(key),), value)
    if "source" in top and top["source"] is not None:
        r.keep(("source",), top["source"])  # the key decides the source; the body's is kept
    for extra in ("custom_fields", "attributes"):
        value = top.get(extra)
        if isinstance(value, dict):
            for k, v in value.items():
                r.keep((str(k),), v)
        elif value is not None:
            r.keep((extra,), value)

    company_value, intent_value = top.get("company"), top.get("intent")
    if isinstance(company_value, str):
        company_value = {"name": company_value}
    if isinstance(intent_value, str):
        intent_value = {"type": intent_value}
    contact_value = top.get("contact")
    if isinstance(contact_value, str) and "@" in contact_value:
        contact_value = {"email": contact_value}
    raw["contact"] = r.section("contact", contact_value, CONTACT_FIELDS)
    raw["company"] = r.section("company", company_value, COMPANY_FIELDS)
    raw["intent"] = r.section("intent", intent_value, INTENT_FIELDS)
    for section, fields in flat.items():
        for target, (key, value) in fields.items():
            nested = raw[section].get(target)
            if nested is not None and _junk(target, nested) and not _junk(target, value):
                # Junk under the nested object ('n/a') gives way to a usable flat email or phone
                # (else the lead was refused); the junk is kept, as a junk second spelling is.
                nested_key, item = r.read_from[f"{section}.{target}"]
                if not (isinstance(item, list) and len(item) > 1):  # a list is kept already
                    r.keep((section, nested_key), item)
                del raw[section][target]
            if target not in raw[section]:
                text = r.text(f"{section}.{target}", value)  # scalars: never a TypeError
                if text is not None:
                    raw[section][target] = text
                    r.given.add(f"{section}.{target}")
                    r.sent_at[f"{section}.{target}"] = ((key,), value)
                if isinstance(value, list) and len(value) > 1:  # the first is used, all are kept
                    r.keep((key,), value)
            elif value is not None and str(value).strip() not in ("", raw[section][target]):
                r.keep((key,), value)  # the nested object's value is used; this one is kept

    company = _company(r, raw["company"])
    if _junk("email", raw["contact"].get("email")) and _junk("phone", raw["contact"].get("phone")):
        # Not inside a batch posted where one lead goes: its answer says where the batch goes.
        _contact_from_labels(r, raw["contact"], deep=not isinstance(body.get("leads"), list))
    contact, usable = _contact(r, raw["contact"], company.country, source)
    if not usable and not partial:
        errors = [{"field": "contact", "message": "needs a usable email or phone"}]
        errors += [i.warning() for i in r.issues if i.field in ("contact.email", "contact.phone")]
        if isinstance(body.get("leads"), list):  # a batch sent where one lead goes: say where it goes
            errors.insert(0, {"field": "leads", "message": "a batch of leads is the body of POST /v1/leads:batch; "
                                                           "on Kafka, publish one lead per record"})
        raise Refused(errors)
    intent = _intent(r, raw["intent"], source, aliases, partial)
    return Submission(
        contact=contact, company=company, intent=intent,
        consent=_consent(r, top.get("consent")),
        external_id=_external_id(r, top.get("external_id")),
        submitted_at=_submitted_at(r, top.get("submitted_at"), source),
        score=_score(r, top.get("score")),
        attributes=r.attributes, issues=r.issues, given=r.given,
    )


# Words in a field's name that say it holds the contact's email or phone, whatever the label
# around them ('Business Email Address', 'E-Mail-Adresse', 'email_1', 'Mobile Phone Number').
_LABELS = {"email": ("mail",), "phone": ("phone", "mobile", "cell", "tel")}


def _contact_from_labels(r: _Reader, contact: dict[str, Any], *, deep: bool = True) -> None:
    """Without an email or phone it could use, before a lead is refused: a field of the body (or
    of its contact) unknown by name whose name says email or phone and whose value looks usable is
    read as the contact's, with a warning naming it (a form builder's labels are endless)."""
    nested = r.attributes.get("contact")
    unknown = [*r.attributes.items(), *(nested.items() if isinstance(nested, dict) else ())]
    for target, words in _LABELS.items():
        for key, value in unknown:
            value = value[0] if _scalars(value) else value
            if isinstance(value, str) and any(w in snake(key) for w in words) and not _junk(target, value):
                contact[target] = value.strip()
                # Named by the field sent: a warning on contact.email would mark it kept as sent.
                r.warn(str(key), f"read as contact.{target}; kept here too", value)
                break
    if "email" in contact or "phone" in contact or not deep:
        return
    # A vendor's envelope (HubSpot's fields, Meta's field_data, Google's user_column_data,
    # Typeform's answers, a webhook's data/payload/properties): the same search, however deep,
    # taking only what is unambiguous: of several records (Marketo's input list), one taken and
    # the others left in attributes would be leads lost without a word; refused, the sender knows.
    found = list(_labelled_texts(r.attributes, ""))
    for target, words in _LABELS.items():
        usable = [(path, value) for path, label, value in found
                  if any(w in snake(label) for w in words) and not _junk(target, value)
                  and not any(w in snake(path) for w in _NOT_THE_LEADS)]
        if len({value.strip().lower() for _, value in usable}) == 1:
            path, value = usable[0]
            contact[target] = value.strip()
            r.warn(path, f"read as contact.{target}; kept here too", value)


# Whose an email or phone found deep in an envelope is not: the webinar's host, the CRM's owner...
_NOT_THE_LEADS = ("host", "owner", "organizer", "organiser", "agent", "admin", "manager", "assignee", "sender")
# A {name, value} pair as vendors list form fields: the keys naming the field and holding its value.
_PAIR_LABELS = ("name", "column_id", "column_name", "key", "label", "ref", "type")
_PAIR_VALUES = ("value", "values", "string_value", "answer")


def _text_of(value: Any) -> str | None:
    """A field's text: itself, the first of a list, or a {value} object's (HubSpot's properties,
    Pipedrive's [{value, primary}])."""
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict) and not any(k in value for k in _PAIR_LABELS):  # not a list of pairs
        value = value.get("value")
    return value if isinstance(value, str) else None


def _labelled_texts(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str, str]]:
    """(where, its label, the text) for every text in `value`, depth first: a field by its name,
    a {name, value} pair by the name it gives."""
    if depth > 8:
        return
    if isinstance(value, dict):
        label = next((value[k] for k in _PAIR_LABELS if isinstance(value.get(k), str)), None)
        text = next((_text_of(value[k]) for k in _PAIR_VALUES if k in value), None)
        if label is not None and text is not None:
            yield path, label, text
        for key, item in value.items():
            at = f"{path}.{key}" if path else str(key)
            if (text := _text_of(item)) is not None:
                yield at, str(key), text
            else:
                yield from _labelled_texts(item, at, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value[:200]):
            yield from _labelled_texts(item, f"{path}[{index}]", depth + 1)


# What follows a comma after a full name without being a first name ("Ada Lovelace, PhD").
NAME_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "phd", "md", "mba", "cpa", "esq", "dds", "rn", "pe",
                           "jd", "msc", "bsc", "ma", "ba", "cfa", "pmp"})


def _contact(r: _Reader, raw: dict[str, Any], company_country: str | None,
             source: IntakeSource) -> tuple[Contact, bool]:
    out: dict[str, Any] = {}
    name = raw.pop("name", None)
    if name and not raw.get("first_name") and not raw.get("last_name"):
        before, _, after = name.partition(",")
        if after and fold(after) in NAME_SUFFIXES:  # "Ada Lovelace, PhD": a suffix, not a first name
            name = before.strip()
        if "," in name:  # "Lovelace, Ada": the order CRM exports and directories write
            last, _, first = (part.strip() for part in name.partition(","))
            out["first_name"], out["last_name"] = (first, last or None) if first else (last or None, None)
        else:
            first, _, last = name.rpartition(" ")
            out["first_name"], out["last_name"] = (first, last) if first else (name, None)
    elif name:
        r.keep(("contact", "name"), name)
    for key in ("first_name", "last_name", "title"):
        if raw.get(key):
            out[key] = raw[key]
    usable = False
    if email := raw.get("email"):
        usable = r.normalized(out, "email", "contact.email", normalize_email, email)
        if usable and email.count("@") > 1 and not email.lstrip().startswith('"'):
            r.keep_as_sent("contact.email", email)  # several addresses: the first usable is the contact's
    if country := raw.get("country"):
        r.normalized(out, "country", "contact.country", normalize_country, country)
    phone_zone = None
    if phone := raw.get("phone"):
        # A country kept as sent ('EU') gives way to the next: it must not hide the company's.
        region = next(filter(None, map(dialling_region, (out.get("country"), company_country))),
                      source.default_region)
        numbers = [part for part in _PHONE_SEPARATORS.split(phone) if dialable(part)]
        try:
            if len(numbers) > 1:  # '+1 415 555 2671, +1 212 555 0100' (or ';': not an extension)
                parsed = _first_read(numbers, lambda number: normalize_phone(number, region))
                r.keep_as_sent("contact.phone", phone)
            else:
                parsed = normalize_phone(phone, region)
            out["phone"], out["phone_extension"] = parsed.e164, parsed.extension
            usable, phone_zone = True, parsed.timezone
        except ValueError as exc:
            out["phone"] = phone
            r.warn("contact.phone", f"{exc}; kept as sent", phone)
            usable = usable or dialable(phone)
    if language := raw.get("language"):
        r.normalized(out, "language", "contact.language", normalize_language, language)
    if zone := raw.get("timezone"):
        r.normalized(out, "timezone", "contact.timezone", normalize_timezone, zone)
    elif phone_zone:
        out["timezone"] = phone_zone
    return Contact(**out), usable


def _company(r: _Reader, raw: dict[str, Any]) -> Company:
    out: dict[str, Any] = {k: raw[k] for k in ("name", "industry", "website") if raw.get(k)}
    if domain := raw.get("domain") or raw.get("website"):
        host = _host(domain)
        if host:
            out["domain"] = host
        elif raw.get("domain"):
            out["domain"] = raw["domain"]
            r.warn("company.domain", "is not a domain name; kept as sent", raw["domain"])
    if country := raw.get("country"):
        try:
            out["country"] = normalize_country(country)
        except ValueError as exc:
            out["country"] = country
            r.warn("company.country", str(exc), country)
    if (size := raw.get("size")) is not None:
        try:
            normalized = normalize_size(size)
            out.update(size=normalized.band, size_band=normalized.band, employees=normalized.employees,
                       employees_min=normalized.low, employees_max=normalized.high)
        except ValueError as exc:
            out["size"] = size
            r.warn("company.size", str(exc), size)
    return Company(**out)


def _host(text: str) -> str | None:
    """The host of a domain, URL or address ('https://user@www.Acme.com:8443/x#y', 'ACME.COM.',
    'ada@acme.com'), without 'www.'; None if it has none ('Acme Inc')."""
    text = text.strip().lower()
    if "@" in text and "://" not in text:
        text = text.rpartition("@")[2]
    try:
        host = urlsplit(text if "://" in text else "//" + text.lstrip("/")).hostname or ""
    except ValueError:  # an unclosed '[' of an IPv6 literal
        return None
    host = host.removeprefix("www.").rstrip(".")
    return host if "." in host and re.fullmatch(r"[\w.-]+", host) else None


def _intent(r: _Reader, raw: dict[str, Any], source: IntakeSource,
            aliases: dict[str, list[str]] | None, partial: bool) -> Intent:
    out = {k: raw[k] for k in ("product", "message") if raw.get(k)}
    given = raw.get("type")
    if given is None:
        if partial:
            return Intent(type="", **out)
        return Intent(type=source.default_intent or "inquiry", **out)
    canonical = classify_intent(given, aliases)
    if canonical is None:
        canonical = slug(given) or "inquiry"
        if canonical not in (aliases or {}):
            r.warn("intent.type", f"{given!r} is not a known intent type; tiered by the default rules",
                   given)
    return Intent(type=canonical, **out)


def _consent(r: _Reader, value: Any) -> Consent:
    if value is None:
        return Consent()
    if not isinstance(value, dict):
        try:
            return Consent(marketing=parse_bool(value))
        except ValueError:
            r.warn("consent", "is not an object or yes/no; kept in attributes", value)
            r.keep(("consent",), value)
            return Consent()
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = snake(str(key))
        if name in ("marketing", "contact") and (item is None or name in out):
            if item is not None:  # given twice ('Marketing' after 'marketing'): the first holds
                r.warn(f"consent.{name}", f"given again as {str(key)!r}; the first is used, this one kept in "
                                          "attributes", item, kept_as_sent=False)
            r.keep(("consent", str(key)), item)
        elif name in ("marketing", "contact"):
            try:
                out[name] = parse_bool(item)
            except ValueError:
                r.warn(f"consent.{name}", "is not yes or no; kept as sent", item)
                out[f"{name}_as_sent"] = item
        else:
            # Consent is open: the sender's own consent fields stay in it as sent (and, like every
            # field the contract does not name, under attributes).
            out[str(key)] = item
            r.keep(("consent", str(key)), item)
    return Consent(**out)


def _external_id(r: _Reader, value: Any) -> str | None:
    try:
        return r.text("external_id", value)
    except TypeError:
        r.warn("external_id", "is not text; kept in attributes", value)
        r.keep(("external_id",), value)
        return None


def _submitted_at(r: _Reader, value: Any, source: IntakeSource) -> datetime | None:
    if value is None or value == "":
        return None
    zone = source.timezone or "UTC"
    try:
        parsed, assumed = parse_timestamp(value, zone)
    except ValueError as exc:
        r.warn("submitted_at", f"{exc}; kept in attributes", value)
        r.keep(("submitted_at",), value)
        return None
    if assumed:
        r.warn("submitted_at", f"has no UTC offset; read in the source's time zone {zone}", value,
               kept_as_sent=False)
    return parsed


def _score(r: _Reader, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = parse_number(value)
    except ValueError as exc:
        r.warn("score", f"{exc}; kept in attributes, not used for tiering", value)
        r.keep(("score",), value)
        return None
    # Any finite number: marketing automation scores have no cap (Pardot and Marketo run to
    # hundreds, negative scoring goes below 0), and tier rules' min_score is set on their scale.
    return number

