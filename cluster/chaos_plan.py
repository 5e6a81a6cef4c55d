"""The chaos schedule: what `synapse chaos run` will do, drawn from one seed, with no I/O at all.

Why it works as it does (Jepsen's generators, made replayable):
- The schedule is planned entirely before anything starts, by pure functions of the options and one
  `random.Random(seed)` passed in. So `synapse chaos plan` prints exactly what `run` executes, the same
  seed and options always give byte-identical JSON lines, a report folder's `schedule.jsonl` replays
  the run, and `shrink` can delete items and run the rest. Nothing here looks at a clock or a node.
- Three sources, kept apart as Jepsen keeps its nemesis apart from the client workload:
  the nemesis (faults: kill -9 + restart, SIGSTOP/SIGCONT, partitions, one-way cuts, crash points
  inside an upgrade; opt-in: a node's clock skewed, one node's links delayed or lossy), the workload (honest proposals, votes, rollback proposals, notes) and the
  adversary (a Byzantine member and validator whose keys it holds: backdated and equivocating votes,
  replayed entries, EXECUTE_UPGRADEs with forged or minority certificates, a proposal flood).
- Every fault is a pair: a start item and its heal item (restart, resume, heal, recover), both in
  the schedule, the heal before the end of the run. At most `faults_at_once_max` faults overlap, at
  most one of them cuts the network (a heal flushes every cut), and no node suffers two process
  faults at once. The runner heals everything again at the end regardless (belt and braces).
- Items name proposals symbolically ("p3": the third proposal of the schedule); the runner maps a
  name to the real proposal id once its propose call answered. Versions are planned too: each
  proposal gets the next version of a fixed ladder, so a later proposal is always a newer version.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from node import fault_points

SCHEDULE_FORMAT = "synapse-chaos-schedule/v1"
FAULT_KINDS = ("kill", "pause", "partition_halves", "partition_validators", "cut_one_way", "crash_at")
# Opt-in kinds (`--faults ...,skew,delay,loss`): not in `all`, so the default schedule of a seed is unchanged.
OPTIONAL_FAULT_KINDS = ("skew", "delay", "loss")
ALL_FAULT_KINDS = FAULT_KINDS + OPTIONAL_FAULT_KINDS
LINK_FAULT_KINDS = ("delay", "loss")      # only a provider with real links (netns) can inject these
PROVIDERS = ("loopback", "netns")
ADVERSARY_KINDS = ("backdated_vote", "equivocating_vote", "replay", "forged_execute", "minority_execute", "flood")
NEMESIS_OPS = ("kill", "restart", "pause", "resume", "partition", "cut", "heal", "crash_at", "recover", "skew", "unskew",
               "delay", "loss")
WORKLOAD_OPS = ("propose", "vote", "propose_rollback", "note")
# The upgrade steps where a node may be made to kill itself (node/fault_points.py POINTS).
CRASH_POINTS = fault_points.POINTS
MEMBER_CRASH_POINTS = tuple(point for point in CRASH_POINTS if point not in fault_points.VALIDATOR_POINTS)
HOSTILE_PACKAGES = ("endless_loop", "memory_bomb", "wasi_import", "garbage_output", "panic", "delete_members",
                    "not_an_object")
NODES_MIN, NODES_MAX = 3, 9
DURATION_MIN_MS, DURATION_MAX_MS = 10_000, 3_600_000
VOTING_PERIOD_MS = 8_000          # genesis voting period of a chaos cluster (proposals close during the run)
FAULT_LENGTH_MIN_MS, FAULT_LENGTH_MAX_MS = 3_000, 10_000
FAULT_GAP_MIN_MS, FAULT_GAP_MAX_MS = 2_000, 7_000
HEAL_MARGIN_MS = 3_000            # every fault heals at least this long before the end of the schedule
WORKLOAD_GAP_MIN_MS, WORKLOAD_GAP_MAX_MS = 2_500, 6_000
ADVERSARY_GAP_MIN_MS, ADVERSARY_GAP_MAX_MS = 5_000, 12_000
VOTERS_PER_PROPOSAL_MAX = 4
FLOOD_PROPOSALS = 8
FAULTS_AT_ONCE_MAX = 2
SKEW_MAX_MS = 20_000              # a skew moves one node's clock by 500 ms..20 s, either way
SKEW_MIN_MS = 500
DELAY_MIN_MS, DELAY_MAX_MS = 50, 300
DELAY_JITTER_MAX_MS = 50
LOSS_MIN_PERCENT, LOSS_MAX_PERCENT = 5, 30
ITEMS_MAX = 2_000
SEED_MAX = 2**63 - 1
LIVENESS_VERSION = "9.9.9"        # the final liveness upgrade, newer than anything the ladder reaches
FLOOD_MAJOR = 8                   # flood proposals use 8.x.y: never a version of the ladder or of liveness


class PlanError(ValueError):
    """Options that cannot make a schedule; the message says what to change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosOptions:
    seed: int
    nodes: int = 5
    validators: int = 3
    duration_ms: int = 120_000
    faults: tuple[str, ...] = FAULT_KINDS
    adversary: tuple[str, ...] = ADVERSARY_KINDS
    faults_at_once_max: int = FAULTS_AT_ONCE_MAX
    provider: str = "loopback"

    def __post_init__(self) -> None:
        if not NODES_MIN <= self.nodes <= NODES_MAX:
            raise PlanError(f"--nodes must be {NODES_MIN}..{NODES_MAX}, not {self.nodes}")
        if not 1 <= self.validators <= self.nodes:
            raise PlanError(f"--validators must be 1..{self.nodes} (the nodes), not {self.validators}")
        if not DURATION_MIN_MS <= self.duration_ms <= DURATION_MAX_MS:
            raise PlanError(f"--duration must be {DURATION_MIN_MS // 1000} s..{DURATION_MAX_MS // 1000} s, "
                            f"not {self.duration_ms / 1000:g} s")
        for name, given, known in (("--faults", self.faults, ALL_FAULT_KINDS), ("--adversary", self.adversary, ADVERSARY_KINDS)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise PlanError(f"{name}: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(known)} (or 'none')")
        if not 1 <= self.faults_at_once_max <= self.nodes:
            raise PlanError(f"at most 1..{self.nodes} faults at once, not {self.faults_at_once_max}")
        if self.provider not in PROVIDERS:
            raise PlanError(f"--provider must be one of {', '.join(PROVIDERS)}, not {self.provider!r}")
        links = [kind for kind in self.faults if kind in LINK_FAULT_KINDS]
        if links and self.provider != "netns":
            raise PlanError(f"--faults {','.join(links)}: the {self.provider} provider cannot delay or drop packets; "
                            f"run with --provider netns (as root), or leave {' and '.join(links)} out of --faults")

    @property
    def adversary_member(self) -> int:
        """The member whose key the adversary holds (the last node)."""
        return self.nodes

    @property
    def adversary_validator(self) -> int:
        """The validator whose key the adversary holds (the last validator: a minority when validators >= 2)."""
        return self.validators

    def as_dict(self) -> dict:
        return {"seed": self.seed, "nodes": self.nodes, "validators": self.validators, "duration_ms": self.duration_ms,
                "faults": list(self.faults), "adversary": list(self.adversary),
                "faults_at_once_max": self.faults_at_once_max,
                **({"provider": self.provider} if self.provider != "loopback" else {})}   # old schedules stay byte-identical

    @classmethod
    def from_dict(cls, document: Mapping) -> "ChaosOptions":
        try:
            return cls(seed=int(document["seed"]), nodes=int(document["nodes"]), validators=int(document["validators"]),
                       duration_ms=int(document["duration_ms"]), faults=tuple(document["faults"]),
                       adversary=tuple(document["adversary"]), faults_at_once_max=int(document["faults_at_once_max"]),
                       provider=str(document.get("provider", "loopback")))
        except (KeyError, TypeError, ValueError) as error:
            raise PlanError(f"the schedule's options are incomplete or malformed ({error!r}); "
                            "re-plan it with `synapse chaos plan`") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One scheduled operation: not before `at_ms` after the start, on `nodes` (1-based)."""
    id: int
    at_ms: int
    source: str                      # nemesis | workload | adversary
    op: str
    nodes: tuple[int, ...] = ()
    value: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.source in ("nemesis", "workload", "adversary"), self.source
        assert self.at_ms >= 0, self.at_ms

    def as_dict(self) -> dict:
        return {"id": self.id, "at_ms": self.at_ms, "source": self.source, "op": self.op, "nodes": list(self.nodes),
                "value": dict(self.value)}

    @classmethod
    def from_dict(cls, document: Mapping) -> "Item":
        return cls(id=int(document["id"]), at_ms=int(document["at_ms"]), source=str(document["source"]),
                   op=str(document["op"]), nodes=tuple(int(node) for node in document.get("nodes", ())),
                   value=dict(document.get("value") or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    options: ChaosOptions
    items: tuple[Item, ...]

    def without(self, item_ids: Iterable[int]) -> "Schedule":
        """The schedule minus some items; a removed fault start takes its heal with it (nothing left unhealed)."""
        removed = set(item_ids)
        faults = {item.value.get("fault") for item in self.items if item.id in removed and item.source == "nemesis"}
        kept = tuple(item for item in self.items if item.id not in removed
                     and not (item.source == "nemesis" and item.value.get("fault") in faults))
        return Schedule(options=self.options, items=kept)


# --- versions --------------------------------------------------------------------------------


def version_ladder(count: int) -> list[str]:
    """1.2.0, 1.3.0, ..., 1.9.0, 2.0.0, ...: five characters each (the generated packages substitute the
    version text in place, so it keeps its length), always increasing, never reaching 8.x.y or 9.9.9."""
    versions = []
    for number in range(12, 12 + count):
        major, minor = divmod(number, 10)
        if major >= FLOOD_MAJOR:
            raise PlanError("too many proposals for the version ladder: shorten --duration")
        versions.append(f"{major}.{minor}.0")
    return versions


# --- the nemesis -----------------------------------------------------------------------------


def _fault_items(kind: str, options: ChaosOptions, rng: random.Random, busy: set[int]) -> tuple[str, tuple, dict, str, tuple, dict] | None:
    """(start op, its nodes, its value, heal op, heal nodes, heal value) for one fault, or None when
    every node it could hit is already faulted."""
    everyone = list(range(1, options.nodes + 1))
    free = [node for node in everyone if node not in busy]
    if kind in ("kill", "pause", "crash_at", "skew"):
        if not free:
            return None
        node = rng.choice(free)
        if kind == "skew":
            skew_ms = rng.choice((-1, 1)) * rng.randint(SKEW_MIN_MS, SKEW_MAX_MS)
            return "skew", (node,), {"ms": skew_ms}, "unskew", (node,), {}
        if kind == "kill":
            return "kill", (node,), {}, "restart", (node,), {}
        if kind == "pause":
            return "pause", (node,), {}, "resume", (node,), {}
        points = CRASH_POINTS if node <= options.validators else MEMBER_CRASH_POINTS   # nodes 1..validators validate
        return "crash_at", (node,), {"point": rng.choice(points)}, "recover", (node,), {}
    if kind == "partition_halves":
        shuffled = everyone[:]
        rng.shuffle(shuffled)
        half = len(shuffled) // 2
        groups = [sorted(shuffled[:half]), sorted(shuffled[half:])]
        return "partition", (), {"groups": groups, "kind": kind}, "heal", (), {}
    if kind == "partition_validators":
        validators = list(range(1, options.validators + 1))
        minority = sorted(rng.sample(validators, (len(validators) - 1) // 2 or 1))
        members = [node for node in everyone if node > options.validators]
        side = sorted(minority + rng.sample(members, rng.randint(0, len(members))))
        rest = [node for node in everyone if node not in side]
        if not rest:
            return None
        return "partition", (), {"groups": [side, rest], "kind": kind}, "heal", (), {}
    if kind in LINK_FAULT_KINDS:
        # One node's links, both ways: every packet it sends or receives is delayed (or some are dropped).
        node = rng.choice(everyone)
        if kind == "delay":
            value = {"ms": rng.randint(DELAY_MIN_MS, DELAY_MAX_MS), "jitter_ms": rng.randint(0, DELAY_JITTER_MAX_MS)}
        else:
            value = {"percent": rng.randint(LOSS_MIN_PERCENT, LOSS_MAX_PERCENT)}
        return kind, (), {"links_of": [node], **value, "kind": kind}, "heal", (), {}
    assert kind == "cut_one_way", kind
    source = rng.choice(everyone)
    others = [node for node in everyone if node != source]
    targets = sorted(rng.sample(others, rng.randint(1, len(others))))
    return "cut", (), {"from": [source], "to": targets, "kind": kind}, "heal", (), {}


def plan_nemesis(options: ChaosOptions, rng: random.Random) -> list[tuple[int, str, tuple, dict]]:
    """(at_ms, op, nodes, value) for every fault start and heal; see the module docstring for the bounds."""
    planned: list[tuple[int, str, tuple, dict]] = []
    active: list[tuple[int, bool, tuple]] = []   # (heal at, cuts the network, nodes it holds)
    end_ms = options.duration_ms - HEAL_MARGIN_MS
    moment = rng.randint(FAULT_GAP_MIN_MS, FAULT_GAP_MAX_MS)
    fault = 0
    while options.faults and moment < end_ms - FAULT_LENGTH_MIN_MS and len(planned) < ITEMS_MAX // 2:
        active = [window for window in active if window[0] > moment]
        if len(active) >= options.faults_at_once_max:
            moment = min(window[0] for window in active) + 1
            continue
        kind = rng.choice(options.faults)
        network = kind.startswith("partition") or kind in ("cut_one_way", *LINK_FAULT_KINDS)   # a heal undoes them all
        busy = {node for window in active for node in window[2]}
        drawn = None if network and any(window[1] for window in active) else _fault_items(kind, options, rng, busy)
        if drawn is not None:
            start_op, start_nodes, start_value, heal_op, heal_nodes, heal_value = drawn
            heal_at = min(moment + rng.randint(FAULT_LENGTH_MIN_MS, FAULT_LENGTH_MAX_MS), end_ms)
            fault += 1
            planned.append((moment, start_op, start_nodes, {**start_value, "fault": fault}))
            planned.append((heal_at, heal_op, heal_nodes, {**heal_value, "fault": fault}))
            active.append((heal_at, network, start_nodes))
        moment += rng.randint(FAULT_GAP_MIN_MS, FAULT_GAP_MAX_MS)
    return planned


# --- the workload ----------------------------------------------------------------------------


def _honest_nodes(options: ChaosOptions) -> list[int]:
    return [node for node in range(1, options.nodes + 1) if node != options.adversary_member]


def _votes_for(name: str, at_ms: int, options: ChaosOptions, rng: random.Random, end_ms: int) -> list[tuple[int, str, tuple, dict]]:
    """0..4 distinct honest voters, mostly approving, inside the voting period; sometimes one votes twice."""
    honest = _honest_nodes(options)
    voters = rng.sample(honest, rng.randint(0, min(VOTERS_PER_PROPOSAL_MAX, len(honest))))
    votes = []
    for voter in voters:
        moment = at_ms + rng.randint(500, VOTING_PERIOD_MS - 1_000)
        vote = "approval" if rng.random() < 0.8 else "rejection"
        if moment < end_ms:
            votes.append((moment, "vote", (voter,), {"proposal": name, "vote": vote}))
        if rng.random() < 0.15 and moment + 700 < end_ms:
            again = "rejection" if vote == "approval" else "approval"
            votes.append((moment + 700, "vote", (voter,), {"proposal": name, "vote": again, "repeat": True}))
    return votes


def plan_workload(options: ChaosOptions, rng: random.Random) -> list[tuple[int, str, tuple, dict]]:
    """Proposals (good, hostile, hash mismatch), their votes, rollback proposals and notes."""
    planned: list[tuple[int, str, tuple, dict]] = []
    end_ms = options.duration_ms - HEAL_MARGIN_MS
    honest = _honest_nodes(options)
    good: list[tuple[str, int]] = []       # (name, planned at) of good upgrade proposals, for rollbacks
    proposals = 0
    moment = rng.randint(1_000, 3_000)
    while moment < end_ms - VOTING_PERIOD_MS // 2 and len(planned) < ITEMS_MAX // 2:
        choice = rng.choices(("good", "hostile", "mismatch", "rollback", "note"), weights=(5, 2, 1, 1, 2))[0]
        node = rng.choice(honest)
        if choice == "note":
            planned.append((moment, "note", (node,), {"text": f"chaos note at {moment} ms"}))
        elif choice == "rollback" and any(at <= moment - 3 * VOTING_PERIOD_MS // 2 for _, at in good):
            target = rng.choice([name for name, at in good if at <= moment - 3 * VOTING_PERIOD_MS // 2])
            proposals += 1
            name = f"p{proposals}"
            planned.append((moment, "propose_rollback", (node,), {"proposal": name, "target": target}))
            planned += _votes_for(name, moment, options, rng, end_ms)
        elif choice != "rollback":
            proposals += 1
            name = f"p{proposals}"
            value = {"proposal": name, "package": "good"}
            if choice == "hostile":
                value["package"] = rng.choice(HOSTILE_PACKAGES)
            elif choice == "mismatch":
                value["hash_mismatch"] = True
            planned.append((moment, "propose", (node,), value))
            planned += _votes_for(name, moment, options, rng, end_ms)
            if choice == "good":
                good.append((name, moment))
        moment += rng.randint(WORKLOAD_GAP_MIN_MS, WORKLOAD_GAP_MAX_MS)
    return planned


# --- the adversary ---------------------------------------------------------------------------


def plan_adversary(options: ChaosOptions, workload: Sequence[tuple[int, str, tuple, dict]],
                   rng: random.Random) -> list[tuple[int, str, tuple, dict]]:
    """Byzantine actions by the adversary's member (and, for minority certificates, its validator)."""
    planned: list[tuple[int, str, tuple, dict]] = []
    proposals = [(at, value["proposal"]) for at, op, _nodes, value in workload if op in ("propose", "propose_rollback")]
    member, end_ms = options.adversary_member, options.duration_ms - HEAL_MARGIN_MS
    moment = rng.randint(4_000, 8_000)
    floods = 0
    while options.adversary and moment < end_ms and len(planned) < ITEMS_MAX // 4:
        kind = rng.choice(options.adversary)
        closed = [name for at, name in proposals if at <= moment - VOTING_PERIOD_MS - 3_000]
        open_now = [name for at, name in proposals if moment - VOTING_PERIOD_MS + 2_000 <= at <= moment]
        if kind == "backdated_vote" and closed:
            # The latest closed proposal: the member is then least likely to have written entries since its
            # deadline (a backdated vote must chain after the member's own latest entry).
            planned.append((moment, kind, (member,), {"proposal": closed[-1], "vote": "approval"}))
        elif kind == "equivocating_vote" and open_now:
            planned.append((moment, kind, (member,), {"proposal": rng.choice(open_now)}))
        elif kind == "replay":
            target = rng.choice([node for node in range(1, options.nodes + 1)])
            planned.append((moment, kind, (target,), {"entry_kind": rng.choice(("PROPOSAL", "VOTE", "CLOSE", "EXECUTE_UPGRADE"))}))
        elif kind in ("forged_execute", "minority_execute"):
            value = {"certificate": "forged" if kind == "forged_execute" else "minority",
                     "signers": [options.adversary_validator]}
            planned.append((moment, kind, (member,), value))
        elif kind == "flood":
            floods += 1
            planned.append((moment, kind, (member,), {"count": FLOOD_PROPOSALS, "batch": floods}))
        moment += rng.randint(ADVERSARY_GAP_MIN_MS, ADVERSARY_GAP_MAX_MS)
    return planned


# --- the whole schedule ----------------------------------------------------------------------

_SOURCE_ORDER = {"nemesis": 0, "workload": 1, "adversary": 2}


def plan(options: ChaosOptions, rng: random.Random) -> Schedule:
    """The schedule for these options, drawn from `rng` (seeded by the caller with options.seed).
    Each source draws from its own generator derived from `rng`, so adding a fault kind does not change
    the workload of the same seed."""
    nemesis_rng, workload_rng, adversary_rng = (random.Random(rng.getrandbits(64)) for _ in range(3))
    workload = plan_workload(options, workload_rng)
    drawn = [("nemesis", *item) for item in plan_nemesis(options, nemesis_rng)]
    drawn += [("workload", *item) for item in workload]
    drawn += [("adversary", *item) for item in plan_adversary(options, workload, adversary_rng)]
    drawn.sort(key=lambda item: (item[1], _SOURCE_ORDER[item[0]]))
    versions = iter(version_ladder(sum(1 for item in drawn if item[2] in ("propose",))))
    items = []
    for number, (source, at_ms, op, nodes, value) in enumerate(drawn[:ITEMS_MAX], start=1):
        if op == "propose":
            value = {**value, "version": next(versions)}
        items.append(Item(id=number, at_ms=at_ms, source=source, op=op, nodes=tuple(nodes), value=value))
    return Schedule(options=options, items=tuple(items))


def make_schedule(options: ChaosOptions) -> Schedule:
    return plan(options, random.Random(options.seed))


def schedule_lines(schedule: Schedule) -> list[str]:
    """JSON lines: a header with the format and options, then one line per item (canonical: sorted keys)."""
    header = {"format": SCHEDULE_FORMAT, "options": schedule.options.as_dict()}
    return [json.dumps(document, sort_keys=True, separators=(",", ":"))
            for document in [header] + [item.as_dict() for item in schedule.items]]


def parse_schedule(lines: Iterable[str]) -> Schedule:
    """The inverse of schedule_lines. Raises PlanError naming the bad line."""
    documents = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            documents.append(json.loads(line))
        except ValueError:
            raise PlanError(f"schedule line {number} is not JSON; re-plan with `synapse chaos plan`") from None
    if not documents or documents[0].get("format") != SCHEDULE_FORMAT:
        raise PlanError(f"not a chaos schedule: the first line must name format {SCHEDULE_FORMAT}")
    try:
        items = tuple(Item.from_dict(document) for document in documents[1:])
    except (KeyError, TypeError, ValueError, AssertionError) as error:
        raise PlanError(f"a schedule item is malformed ({error!r}); re-plan with `synapse chaos plan`") from None
    options = ChaosOptions.from_dict(documents[0]["options"])
    for item in items:
        _check_bounds(item, options)
    return Schedule(options=options, items=items)


def _in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _check_bounds(item: Item, options: ChaosOptions) -> None:
    """A schedule file is edited by hand: the opt-in faults' values must stay inside what `plan` draws."""
    value, nodes_ok = item.value, all(_in(node, 1, options.nodes) for node in item.nodes)
    if item.op in ("skew", "unskew"):
        skew_ms = value.get("ms")
        ok = nodes_ok and len(item.nodes) == 1 and (item.op == "unskew" or (type(skew_ms) is int and SKEW_MIN_MS <= abs(skew_ms) <= SKEW_MAX_MS))
    elif item.op in LINK_FAULT_KINDS:
        links = value.get("links_of")
        ok = (isinstance(links, list) and len(links) == 1 and _in(links[0], 1, options.nodes)
              and (_in(value.get("ms"), DELAY_MIN_MS, DELAY_MAX_MS) and _in(value.get("jitter_ms"), 0, DELAY_JITTER_MAX_MS)
                   if item.op == "delay" else _in(value.get("percent"), LOSS_MIN_PERCENT, LOSS_MAX_PERCENT)))
    else:
        return
    if not ok:
        raise PlanError(f"schedule item {item.id} ({item.op}) is out of bounds: skew {SKEW_MIN_MS}..{SKEW_MAX_MS} ms either way, "
                        f"delay {DELAY_MIN_MS}..{DELAY_MAX_MS} ms (jitter <= {DELAY_JITTER_MAX_MS}), loss "
                        f"{LOSS_MIN_PERCENT}..{LOSS_MAX_PERCENT} %, on one node of 1..{options.nodes}; "
                        "re-plan with `synapse chaos plan`")


def parse_kinds(text: str, known: Sequence[str], what: str, optional: Sequence[str] = ()) -> tuple[str, ...]:
    """'all', 'none' or a comma-separated list of kinds; `optional` kinds are accepted when named, never in 'all'."""
    text = text.strip()
    if text == "all":
        return tuple(known)
    if text in ("", "none"):
        return ()
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if "all" in kinds:
        kinds = tuple(dict.fromkeys([*known, *(kind for kind in kinds if kind != "all")]))
    unknown = [kind for kind in kinds if kind not in known and kind not in optional]
    if unknown:
        raise PlanError(f"{what}: unknown kind(s) {', '.join(unknown)}; choose from {', '.join((*known, *optional))}, "
                        "'all' or 'none'")
    return kinds
