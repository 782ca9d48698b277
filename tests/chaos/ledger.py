"""What the load generator sent, as the auditor's ground truth: leads (over HTTP or the raw Kafka
topic), touches (over HTTP or the raw activities topic) and the time each touch happened. Written
as JSON so the auditor can also run later, as a script, on a run's ledger file."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Touch:
    occurred_at: float  # epoch seconds, the sender's clock: the time it tells intake
    via: str  # "http" | "kafka"
    accepted: bool = False  # 202 over HTTP, acked by the broker over Kafka
    accepted_at: float | None = None  # when intake (HTTP) or the broker (Kafka) took it
    status: str | None = None  # the last answer: an HTTP status, "acked", or the last error's name


@dataclass
class SentLead:
    n: int
    via: str  # "http" | "kafka"
    external_id: str
    email: str
    phone: str
    sent_at: float  # epoch seconds of the first attempt
    accepted: bool = False  # 201/200 over HTTP, acked by the broker over Kafka
    lead_id: str | None = None  # known at once over HTTP; the auditor finds Kafka leads by external_id
    touches: list[Touch] = field(default_factory=list)
    status: str | None = None  # the last answer: an HTTP status, "acked", or the last error's name
    # A lead sent by an outage probe ("postgres stopped", "broker frozen"), its external id
    # starting with PROBE_PREFIX: accepted only if intake said 201; one answered 503 must not be
    # in intake (half-written).
    probe: str | None = None


PROBE_PREFIX = "probe-"


@dataclass
class Ledger:
    target_seconds: float  # the first_response target of the chaos config (24x7, from receipt)
    leads: list[SentLead] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # "POST /v1/leads 503" -> count
    faults: list[dict] = field(default_factory=list)  # what the injector did, when
    delivered_keys: list[str] = field(default_factory=list)  # idempotency keys the receiver got
    # The services' LEADSLA_SLA_DELAY_TOLERANCE_SECONDS: a breach leaving this late or later is system_delay.
    tolerance_seconds: float = 60.0

    def count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Ledger:
        raw = json.loads(path.read_text())
        leads = [SentLead(**{**lead, "touches": [Touch(**t) for t in lead["touches"]]}) for lead in raw["leads"]]
        return cls(raw["target_seconds"], leads, raw.get("statuses", {}), raw.get("faults", []),
                   raw.get("delivered_keys", []), raw.get("tolerance_seconds", 60.0))
