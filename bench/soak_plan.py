"""The soak's timetable and its record: when each fault comes, what each fault did, what the load did."""

from __future__ import annotations

from dataclasses import dataclass

from bench.soak_people import Crowd, WeChatSide

FAULTS = {  # kind -> what the table calls it, in the order they happen
    "postgres": "PostgreSQL restart",
    "api_5xx": "fake API 503 burst",
    "rasa": "Rasa SIGKILL",
    "redis": "Redis restart",
    "api_45009": "fake API 45009 burst + push",
    "worker": "worker SIGKILL + restart",
    "api_slow": "slow fake API (timeouts)",
}
WORKERS = 2
FAMILY_EVERY_S, RUSHERS = 20.0, 3  # a group-buy family: how often, and how many strangers join their group
SEQUENCE = "soak_drip"


@dataclass(frozen=True)
class Plan:
    """When each part of the run happens, in seconds from the start of the load."""

    load_s: float
    warmup_s: float
    faults: tuple[str, ...]

    @property
    def slot_s(self) -> float:
        """Each fault's share of the fault period: the fault, then quiet until the next."""
        return (self.load_s - 2 * self.warmup_s) / len(self.faults)

    @property
    def window_s(self) -> float:
        """How long an API fault (5xx, 45009, slow) lasts."""
        return max(5.0, min(15.0, self.slot_s / 3))

    def fault_at(self, index: int) -> float:
        return self.warmup_s + index * self.slot_s

    @property
    def faults_end(self) -> float:
        return self.load_s - self.warmup_s

    @property
    def step_gap_s(self) -> int:
        """Between the soak sequence's steps: half a fault's slot."""
        return int(max(5.0, self.slot_s / 2))

    @property
    def nurture_until(self) -> float:
        """When the last step of someone enrolled at the end of the load is due."""
        return self.load_s + 2 * self.step_gap_s + 5


def make_plan(minutes: float, nlu: str) -> Plan:
    load_s = minutes * 60
    faults = tuple(kind for kind in FAULTS if nlu == "rasa" or kind != "rasa")
    return Plan(load_s, max(20.0, 0.15 * load_s), faults)


def sequence_yaml(plan: Plan) -> str:
    """Three steps half a fault apart, for everyone enrolled at the warm-up's middle and every group-buyer
    (marked 【培育】 so customers do not take them for replies)."""
    gap = plan.step_gap_s
    return (f"sequence: {SEQUENCE}\ndescription: the soak's drip\nmarketing: true\nenroll:\n  - {{tag: 拼团}}\n"
            f"exit: [unsubscribed]\nsteps:\n  - {{id: hello, say: \"【培育】{{{{ customer.name }}}}，欢迎～\"}}\n"
            f"  - {{id: tips, after_previous: {gap}s, say: 【培育】选购小贴士}}\n"
            f"  - {{id: coupon, after_previous: {gap}s, say: 【培育】送您一张券}}\n")


@dataclass(frozen=True)
class FaultRun:
    kind: str
    started: float  # time.time()
    answered: float | None  # a probe on each channel answered (None: not before the next fault)
    note: str
    killed_pid: int | None = None  # the Rasa killed



@dataclass(frozen=True)
class Run:
    load_start: float
    faults: list[FaultRun]
    crowd: Crowd
    side: WeChatSide
    load_average: tuple[float, float, float]  # the machine's, when the load started (others may share it)
