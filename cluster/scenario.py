"""Scenario files: the TOML format, its model, and a parser that names the place of every mistake.

Why it works as it does:
- A scenario is declarative (Jepsen's split between workload and nemesis, written down): the cluster
  shape, the packages to serve, and an ordered list of steps. Anything TOML cannot say goes into a
  `hook = "module:function"` step, so the format never grows a programming language of its own.
- The parser is a table (`ACTIONS`, `CHECKS`): each step kind lists its keys and one validator per
  key. Unknown keys are errors, because a misspelt `within` that is silently ignored is an assertion
  that never waits. Every error starts with the TOML path of the mistake (`steps[4].within`), says
  what is wrong, and the hint says what to write instead.
- References are checked before anything runs: a step that names a proposal, a note or a saved value
  must come after the step that saved it (`save_as`), node indexes must exist in the cluster, and
  packages must be declared. A run never discovers a typo after five minutes of cluster time.
- Node selectors (`on`, `by`, `nodes`, `groups`, `from`, `to`) are parsed here and resolved at run
  time (the Raft leader, the live nodes and random picks only exist then); see `Selector`.
- Pure: no I/O except `load_scenario`, which reads one bounded file.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.addresses import NODES_MAX
from node.config import LIMIT_RANGES
from node.core.semver import VERSION_LENGTH_MAX, is_valid_version
from node.fault_points import POINTS as FAULT_POINTS
from node.limits import CLOCK_SKEW_FAULT_MAX_MS
from node.errors import ScenarioFormatError

SCENARIO_SIZE_MAX_BYTES = 1024 * 1024
STEPS_MAX = 500
PACKAGES_MAX = 32
TEXT_LENGTH_MAX = 4096
NAME_LENGTH_MAX = 200
DURATION_MAX_MS = 3_600_000
DEFAULT_TIMEOUT_MS = 600_000
DEFAULT_SETTLE_MS = 30_000
GROUPS_MAX = 8
RANDOM_GROUPS = ("validators", "non_validators", "followers", "majority", "minority")
VOTING_PERIOD_MIN_MS = 1_000
HOOK_ARGS_MAX = 64
SEED_MAX = 2**63 - 1
PROVIDERS = ("loopback", "netns")    # cluster/providers/__init__.py PROVIDERS (this module stays pure)
LINK_FAULT_STEPS = ("delay", "loss", "bandwidth")
LINK_DELAY_MAX_MS = 60_000
BANDWIDTH_KBIT_RANGE = (8, 10_000_000)
PACKAGE_SOURCE_SUFFIXES = (".wat", ".wasm", ".c")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_NODE_NAME = re.compile(r"^node-(\d{1,3})$")
_NODE_ID = re.compile(r"^[0-9a-f]{16}$")
_RANDOM = re.compile(r"^random(?::(\d{1,3}))?(?:@([a-z_]+))?$")
_HOOK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
_METRIC = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})?$')
_STATE_PATH = re.compile(r"^[A-Za-z0-9_\-*]+(\.[A-Za-z0-9_\-*]+)*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000}

# Named node groups, resolved at run time by cluster/scenario_steps.py.
# "down": nodes this run killed or stopped; "paused": nodes it paused (to restart or resume them).
GROUP_NAMES = ("all", "live", "down", "paused", "validators", "non_validators", "leader", "followers", "majority", "minority", "rest")


class _Invalid(Exception):
    """Raised by field validators; the parser adds the TOML path."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


# --- model -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """A set of nodes, as written: 1-based indexes, node ids, group names, and `random[:k]` picks.

    `random:k@group` picks k distinct live nodes of `group` (default: any live node) with the run's
    seeded generator: "random", "random:2", "random@validators"."""

    indexes: tuple[int, ...] = ()
    node_ids: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    random_picks: tuple[tuple[int, str | None], ...] = ()  # (count, group or None)
    text: str = ""

    def __post_init__(self) -> None:
        if not (self.indexes or self.node_ids or self.groups or self.random_picks):
            raise _Invalid("selects no node", "write a node index (1), a name (\"node-1\"), a node id, or a group")
        unknown = [name for name in self.groups if name not in GROUP_NAMES]
        if unknown:
            raise _Invalid(f"unknown group {unknown[0]!r}", f"groups are {', '.join(GROUP_NAMES)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterShape:
    nodes: int = 5
    validators: int = 3
    reputations: tuple[int, ...] | None = None
    governance: Mapping[str, int] = field(default_factory=dict)  # genesis governance (voting_period_ms, ...)
    limits: Mapping[str, int] = field(default_factory=dict)      # node limits (config), network ones go to genesis
    # A local cluster's packages are on loopback: allowed unless the story is about the public-only policy.
    allow_private_addresses: bool = True
    provider: str = "loopback"   # what runs the nodes: "loopback" (the default) or "netns" (real link faults)

    def __post_init__(self) -> None:
        if not 1 <= self.validators <= self.nodes <= NODES_MAX:
            raise _Invalid(f"needs 1 <= validators <= nodes <= {NODES_MAX}, got nodes={self.nodes} validators={self.validators}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageSpec:
    name: str
    source: Path          # absolute: resolved against the scenario file's directory, then the repository
    corrupt: bool = False  # the servers flip one byte: the package no longer matches its hash


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    index: int            # 0-based position in the file
    do: str               # the action ("partition", "assert", ...)
    label: str            # what progress and the report show
    params: Mapping[str, Any]

    @property
    def path(self) -> str:
        return f"steps[{self.index}]"

    @property
    def check(self) -> str | None:
        return self.params.get("check")

    @property
    def within_ms(self) -> int:
        """An assertion must hold by then (polled); 0: checked once."""
        return self.params.get("within", 0)

    @property
    def during_ms(self) -> int:
        """An assertion must hold at every poll for this long (a safety property over time); 0: not used."""
        return self.params.get("during", 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    description: str
    path: Path | None
    timeout_ms: int
    settle_ms: int        # how long the final safety checks may wait for the cluster to converge
    seed: int | None
    cluster: ClusterShape
    packages: tuple[PackageSpec, ...]
    steps: tuple[Step, ...]

    def package(self, name: str) -> PackageSpec:
        return next(package for package in self.packages if package.name == name)


# --- field validators ------------------------------------------------------------------------
# Each takes (value, context) and returns the parsed value or raises _Invalid.


@dataclass(slots=True)
class _Context:
    """What a validator may consult: the cluster size, packages, and names saved so far."""

    nodes: int
    packages: frozenset[str]
    saved: dict[str, str]  # name -> kind of value ("proposal", "notes", "state_hash", "value")


def parse_duration_ms(value: object) -> int:
    """'250ms', '10s', '1.5s', '2m' -> milliseconds (> 0, at most an hour)."""
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise _Invalid(f"{value!r:.40} is not a duration", 'write it like "500ms", "10s" or "2m"')
    number, unit = _DURATION.match(value.strip()).groups()
    milliseconds = math.ceil(float(number) * _UNIT_MS[unit])
    if not 0 < milliseconds <= DURATION_MAX_MS:
        raise _Invalid(f"{value!r} is out of range", "a duration is more than 0 and at most 60m")
    return milliseconds


def _duration(value: object, context: _Context) -> int:
    return parse_duration_ms(value)


def _voting_period(value: object, context: _Context) -> int:
    milliseconds = parse_duration_ms(value)
    if milliseconds < VOTING_PERIOD_MIN_MS:
        raise _Invalid(f"{value!r} is shorter than {VOTING_PERIOD_MIN_MS} ms", 'genesis needs a voting period of at least "1s"')
    return milliseconds


def _text(length_max: int) -> Callable[[object, _Context], str]:
    def validate(value: object, context: _Context) -> str:
        if not isinstance(value, str) or len(value) > length_max:
            raise _Invalid(f"must be a string of at most {length_max} characters, got {type(value).__name__}")
        return value
    return validate


def _boolean(value: object, context: _Context) -> bool:
    if type(value) is not bool:
        raise _Invalid(f"must be true or false, got {value!r:.40}")
    return value


def _integer(low: int, high: int) -> Callable[[object, _Context], int]:
    def validate(value: object, context: _Context) -> int:
        if type(value) is not int or not low <= value <= high:
            raise _Invalid(f"must be an integer from {low} to {high}, got {value!r:.40}")
        return value
    return validate


def _number(value: object, context: _Context) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Invalid(f"must be a number, got {value!r:.40}")
    return value


def _choice(*choices: str) -> Callable[[object, _Context], str]:
    def validate(value: object, context: _Context) -> str:
        if value not in choices:
            raise _Invalid(f"is {value!r:.40}; it must be one of {', '.join(choices)}")
        return value  # type: ignore[return-value]
    return validate


def _percent(value: object, context: _Context) -> float:
    if type(value) not in (int, float) or not 0 <= value <= 100:
        raise _Invalid(f"must be a percentage from 0 to 100, got {value!r:.40}")
    return float(value)


def _any_value(value: object, context: _Context) -> object:
    return value


def _version(value: object, context: _Context) -> str:
    if not is_valid_version(value):
        raise _Invalid(f"{value!r:.40} is not a semantic version", 'write it like "1.2.0"')
    return value  # type: ignore[return-value]


def _new_name(value: object, context: _Context) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise _Invalid(f"{value!r:.40} is not a name", "use letters, digits, '_' and '-', starting with a letter")
    if value in context.saved:
        raise _Invalid(f"the name {value!r} is already saved by an earlier step", "choose another name")
    return value


def _reference(kind: str) -> Callable[[object, _Context], str]:
    def validate(value: object, context: _Context) -> str:
        if not isinstance(value, str) or value not in context.saved:
            raise _Invalid(f"{value!r:.40} is not saved by an earlier step",
                           f"an earlier step must save it with save_as = {value!r:.40}" if isinstance(value, str) else "give a name")
        if context.saved[value] != kind:
            raise _Invalid(f"{value!r} names a {context.saved[value]}, not a {kind}")
        return value
    return validate


def _package(value: object, context: _Context) -> str:
    if value not in context.packages:
        known = ", ".join(sorted(context.packages)) or "none declared"
        raise _Invalid(f"{value!r:.40} is not a declared package", f"declare it in a [[packages]] table (known: {known})")
    return value  # type: ignore[return-value]


def _hook(value: object, context: _Context) -> str:
    if not isinstance(value, str) or not _HOOK.match(value):
        raise _Invalid(f"{value!r:.80} is not 'module:function'", 'write it like "scenarios.hooks:forge_vote"')
    return value


def _metric(value: object, context: _Context) -> str:
    if not isinstance(value, str) or len(value) > 300 or not _METRIC.match(value):
        raise _Invalid(f"{value!r:.80} is not a metric name", 'write it like synapse_entries_refused_total{reason="bad_signature"}')
    return value


def _state_path(value: object, context: _Context) -> str:
    if not isinstance(value, str) or len(value) > 300 or not _STATE_PATH.match(value):
        raise _Invalid(f"{value!r:.80} is not a state path", 'write dotted keys, "*" for every key: "global.nodes.*.new_feature_enabled"')
    return value


def _selector_item(item: object, context: _Context, indexes: list, node_ids: list, groups: list, picks: list,
                   allow_rest: bool) -> None:
    if type(item) is int or (isinstance(item, str) and _NODE_NAME.match(item)):
        index = item if type(item) is int else int(_NODE_NAME.match(item).group(1))
        if not 1 <= index <= context.nodes:
            raise _Invalid(f"node {item!r} does not exist: the cluster has nodes 1 to {context.nodes}")
        indexes.append(index)
    elif isinstance(item, str) and _NODE_ID.match(item):
        node_ids.append(item)
    elif isinstance(item, str) and _RANDOM.match(item):
        count, group = int(_RANDOM.match(item).group(1) or 1), _RANDOM.match(item).group(2)
        if not 1 <= count <= context.nodes:
            raise _Invalid(f"{item!r} picks {count} nodes of {context.nodes}")
        if group is not None and group not in RANDOM_GROUPS:
            raise _Invalid(f"{item!r} picks from an unknown group {group!r}", f"groups to pick from: {', '.join(RANDOM_GROUPS)}")
        picks.append((count, group))
    elif item == "rest" and not allow_rest:
        raise _Invalid('"rest" means the nodes no other group names: it is only allowed in partition groups')
    elif isinstance(item, str) and item in GROUP_NAMES:
        groups.append(item)
    else:
        raise _Invalid(f"{item!r:.40} is not a node selector",
                       f'write a node index (1), "node-1", a node id, "random", "random:2", "random@validators", or a group: {", ".join(GROUP_NAMES)}')


def _selector(value: object, context: _Context, *, allow_rest: bool = False) -> Selector:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > NODES_MAX:
        raise _Invalid(f"must list 1 to {NODES_MAX} nodes or groups")
    indexes: list[int] = []
    node_ids: list[str] = []
    groups: list[str] = []
    picks: list[int] = []
    for item in items:
        _selector_item(item, context, indexes, node_ids, groups, picks, allow_rest)
    text = value if isinstance(value, str) else str(value)
    return Selector(indexes=tuple(indexes), node_ids=tuple(node_ids), groups=tuple(groups), random_picks=tuple(picks), text=text)


def parse_selector(value: object, *, nodes: int) -> Selector:
    """A selector written in a hook (`driver.resolve("validators")`), checked like one in a file."""
    try:
        return _selector(value, _Context(nodes=nodes, packages=frozenset(), saved={}), allow_rest=True)
    except _Invalid as problem:
        raise ScenarioFormatError(f"selector {value!r:.60}: {problem.message}", hint=problem.hint or None) from None


def _one_node(value: object, context: _Context) -> Selector:
    selector = _selector(value, context)
    single = len(selector.indexes) + len(selector.node_ids) == 1 and not selector.groups and not selector.random_picks
    if not (single or selector.groups == ("leader",) or (not selector.groups and len(selector.random_picks) == 1
                                                          and selector.random_picks[0][0] == 1)):
        raise _Invalid(f"{value!r:.40} must name exactly one node", 'write a node index, "node-1", a node id, "leader" or "random"')
    return selector


def _groups(value: object, context: _Context) -> tuple[Selector, ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= GROUPS_MAX:
        raise _Invalid(f"must be a list of 2 to {GROUPS_MAX} node selectors", 'write it like [["node-1", "node-2"], "rest"]')
    selectors = tuple(_selector(item, context, allow_rest=True) for item in value)
    if sum("rest" in selector.groups for selector in selectors) > 1:
        raise _Invalid('"rest" may appear in one group only')
    return selectors


def _hook_args(value: object, context: _Context) -> Mapping[str, Any]:
    if not isinstance(value, dict) or len(value) > HOOK_ARGS_MAX:
        raise _Invalid(f"must be a table of at most {HOOK_ARGS_MAX} keys")
    return dict(value)


def _text_list(value: object, context: _Context) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not 1 <= len(items) <= 64 or not all(isinstance(item, str) and len(item) <= TEXT_LENGTH_MAX for item in items):
        raise _Invalid("must be a string or a list of 1 to 64 strings")
    return tuple(items)


def _entry_kind(value: object, context: _Context) -> str:
    kinds = ("PROPOSAL", "VOTE", "RATIFY", "EXECUTE_UPGRADE", "EXECUTION_REPORT", "ROLLBACK", "NOTE")
    return _choice(*kinds)(value, context)


def _expect_error(value: object, context: _Context) -> int | bool:
    if value is True or (type(value) is int and 400 <= value <= 599):
        return value
    raise _Invalid(f"must be true (any 4xx/5xx) or an HTTP status from 400 to 599, got {value!r:.40}")


# --- the tables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Schema:
    required: Mapping[str, Callable[[object, _Context], Any]]
    optional: Mapping[str, Callable[[object, _Context], Any]] = field(default_factory=dict)
    saves: str | None = None  # the kind of value `save_as` names, when the step may save one


_NODES = {"nodes": _selector}
_CALL = {"expect_error": _expect_error}
ACTIONS: Mapping[str, _Schema] = {
    "note": _Schema({"text": _text(TEXT_LENGTH_MAX)}, {"on": _selector, **_CALL}, saves="notes"),
    # Any text as version: a refused proposal (expect_error) may try an odd one; _parse_step checks the others.
    "propose": _Schema({"package": _package, "version": _text(VERSION_LENGTH_MAX)},
                       {"on": _one_node, "via": _choice("http", "ipfs"), "title": _text(200), "description": _text(4000),
                        "hash": _text(80), "size": _integer(0, 2**40), **_CALL}, saves="proposal"),
    "propose_rollback": _Schema({"target": _reference("proposal")},
                                {"on": _one_node, "title": _text(200), "description": _text(4000), **_CALL}, saves="proposal"),
    "vote": _Schema({"proposal": _reference("proposal"), "vote": _choice("approval", "rejection")}, {"by": _selector, **_CALL}),
    "rollback": _Schema({"proposal": _reference("proposal")}, {"on": _selector, **_CALL}),
    "kill": _Schema(_NODES), "stop": _Schema(_NODES), "restart": _Schema(_NODES),
    "crash_at": _Schema({"nodes": _selector, "point": _choice(*FAULT_POINTS)}),
    "pause": _Schema(_NODES), "resume": _Schema(_NODES),
    "partition": _Schema({"groups": _groups}),
    "isolate": _Schema(_NODES),
    "cut": _Schema({"from": _selector, "to": _selector}),
    "skew": _Schema({"nodes": _selector, "ms": _integer(-CLOCK_SKEW_FAULT_MAX_MS, CLOCK_SKEW_FAULT_MAX_MS)}),
    "heal": _Schema({}),
    "delay": _Schema({"from": _selector, "to": _selector, "ms": _integer(0, LINK_DELAY_MAX_MS)},
                     {"jitter_ms": _integer(0, LINK_DELAY_MAX_MS)}),
    "loss": _Schema({"from": _selector, "to": _selector, "percent": _percent}),
    "bandwidth": _Schema({"nodes": _selector, "kbit": _integer(*BANDWIDTH_KBIT_RANGE)}),
    "serve": _Schema({"package": _package, "available": _boolean}),
    "wait": _Schema({"duration": _duration}),
    "hook": _Schema({"hook": _hook}, {"args": _hook_args, "within": _duration}),
    "assert": _Schema({}),  # its keys come from CHECKS, by the value of `check`
}
_ON = {"on": _selector}
CHECKS: Mapping[str, _Schema] = {
    "healthy": _Schema({}, _ON),
    "crashed": _Schema({"on": _selector}),
    "proposal_status": _Schema({"proposal": _reference("proposal")}, {**_ON, "equals": _text(40), "one_of": _text_list,
                                                                       "tally": _text(40)}),
    "version": _Schema({"equals": _version}, _ON),
    "state_field": _Schema({"path": _state_path}, {**_ON, "equals": _any_value, "exists": _boolean}),
    "state_hash": _Schema({}, {**_ON, "equals_saved": _reference("state_hash"), "differs_from_saved": _reference("state_hash")},
                          saves="state_hash"),
    "log_contains": _Schema({}, {**_ON, "notes": _reference("notes"), "kind": _entry_kind, "text": _text(TEXT_LENGTH_MAX),
                                 "count_min": _integer(1, 100_000), "count_max": _integer(1, 100_000)}),
    "log_lacks": _Schema({}, {**_ON, "notes": _reference("notes"), "kind": _entry_kind, "text": _text(TEXT_LENGTH_MAX)}),
    "log_converged": _Schema({}, _ON),
    "metric": _Schema({"metric": _metric}, {**_ON, "equals": _number, "at_least": _number, "at_most": _number}),
}
_STEP_COMMON = {"do", "name", "save_as", "within", "during"}
_CHECK_NEEDS_ONE_OF = {"proposal_status": ("equals", "one_of"), "state_field": ("equals", "exists"),
                       "metric": ("equals", "at_least", "at_most"), "log_contains": ("notes", "kind", "text"),
                       "log_lacks": ("notes", "kind", "text")}


# --- the parser ------------------------------------------------------------------------------


def _fail(path: str, problem: _Invalid) -> ScenarioFormatError:
    return ScenarioFormatError(f"{path}: {problem.message}", hint=problem.hint or None)


def _check_keys(path: str, table: Mapping[str, Any], allowed: set[str], required: set[str] = frozenset()) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioFormatError(f"{path}.{unknown[0]}: unknown key", hint=f"keys here: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(table))
    if missing:
        raise ScenarioFormatError(f"{path}: missing key {missing[0]!r}", hint=f"add {missing[0]} = ...")


def _parse_fields(path: str, table: Mapping[str, Any], schema: _Schema, context: _Context, skip: set[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in table.items():
        if key in skip:
            continue
        validate = schema.required.get(key) or schema.optional.get(key)
        try:
            params[key] = validate(value, context)
        except _Invalid as problem:
            raise _fail(f"{path}.{key}", problem) from None
    return params


def _step_schema(path: str, table: Mapping[str, Any]) -> tuple[str, _Schema, str | None]:
    do = table.get("do")
    if do not in ACTIONS:
        raise ScenarioFormatError(f"{path}.do: {'missing' if do is None else repr(do)[:40] + ' is not an action'}",
                                  hint=f"actions: {', '.join(ACTIONS)}")
    if do != "assert":
        return do, ACTIONS[do], None
    check = table.get("check")
    if check not in CHECKS:
        raise ScenarioFormatError(f"{path}.check: {'missing' if check is None else repr(check)[:40] + ' is not a check'}",
                                  hint=f"checks: {', '.join(CHECKS)}")
    return do, CHECKS[check], check


def _parse_step(index: int, table: object, context: _Context) -> Step:
    path = f"steps[{index}]"
    if not isinstance(table, dict):
        raise ScenarioFormatError(f"{path}: a step must be a table", hint="write each step as a [[steps]] table")
    do, schema, check = _step_schema(path, table)
    allowed = set(schema.required) | set(schema.optional) | _STEP_COMMON | ({"check"} if check else set())
    if schema.saves is None:
        allowed.discard("save_as")
    if do not in ("assert", "hook"):
        allowed.discard("within")
    if do != "assert":
        allowed.discard("during")
    _check_keys(path, table, allowed, set(schema.required))
    params = _parse_fields(path, table, schema, context, skip=_STEP_COMMON | {"check"})
    if check is not None:
        params["check"] = check
        wanted = _CHECK_NEEDS_ONE_OF.get(check)
        if wanted and not any(key in table for key in wanted):
            raise ScenarioFormatError(f"{path}: check {check!r} needs one of {', '.join(wanted)}", hint=f"add {wanted[0]} = ...")
    if "within" in table and "during" in table:
        raise ScenarioFormatError(f"{path}: give within (holds by then) or during (holds all along), not both")
    for key in ("within", "during"):
        if key in table:
            params[key] = _validated(f"{path}.{key}", table[key], _duration, context)
    label = _validated(f"{path}.name", table["name"], _text(NAME_LENGTH_MAX), context) if "name" in table else _default_label(do, params)
    if "save_as" in table:
        params["save_as"] = _validated(f"{path}.save_as", table["save_as"], _new_name, context)
        context.saved[params["save_as"]] = schema.saves
    elif do in ("propose", "propose_rollback") and "expect_error" not in table:
        raise ScenarioFormatError(f"{path}: a proposal step needs save_as", hint='add save_as = "up1" so later steps can name it')
    if do == "propose" and "expect_error" not in table:
        _validated(f"{path}.version", params["version"], _version, context)
    return Step(index=index, do=do, label=label, params=params)


def _validated(path: str, value: object, validate: Callable[[object, _Context], Any], context: _Context) -> Any:
    try:
        return validate(value, context)
    except _Invalid as problem:
        raise _fail(path, problem) from None


def _default_label(do: str, params: Mapping[str, Any]) -> str:
    if do == "assert":
        return f"assert {params['check']}"
    detail = next((params[key] for key in ("nodes", "groups", "proposal", "package", "duration", "hook") if key in params), None)
    if isinstance(detail, Selector):
        detail = detail.text
    elif isinstance(detail, tuple):
        detail = " | ".join(item.text for item in detail)
    elif do == "wait":
        detail = f"{detail} ms"
    return f"{do} {detail}" if detail is not None else do


def _parse_header(document: Mapping[str, Any]) -> dict[str, Any]:
    header = document.get("scenario")
    if not isinstance(header, dict):
        raise ScenarioFormatError("[scenario]: missing", hint='start the file with [scenario] and name = "..."')
    _check_keys("scenario", header, {"name", "description", "timeout", "settle", "seed"}, {"name"})
    context = _Context(nodes=0, packages=frozenset(), saved={})
    return {
        "name": _validated("scenario.name", header["name"], _text(NAME_LENGTH_MAX), context),
        "description": _validated("scenario.description", header.get("description", ""), _text(TEXT_LENGTH_MAX), context),
        "timeout_ms": _validated("scenario.timeout", header["timeout"], _duration, context) if "timeout" in header else DEFAULT_TIMEOUT_MS,
        "settle_ms": _validated("scenario.settle", header["settle"], _duration, context) if "settle" in header else DEFAULT_SETTLE_MS,
        "seed": _validated("scenario.seed", header["seed"], _integer(0, SEED_MAX), context) if "seed" in header else None,
    }


_GOVERNANCE_KEYS = {"voting_period": "voting_period_ms", "approval_threshold_pct": "approval_threshold_pct", "quorum_pct": "quorum_pct"}


def _parse_cluster(document: Mapping[str, Any]) -> ClusterShape:
    table = document.get("cluster", {})
    if not isinstance(table, dict):
        raise ScenarioFormatError("cluster: must be a table", hint="write [cluster] with nodes = 5, validators = 3")
    _check_keys("cluster", table, {"nodes", "validators", "reputations", "governance", "limits", "allow_private_addresses", "provider"})
    context = _Context(nodes=0, packages=frozenset(), saved={})
    nodes = _validated("cluster.nodes", table.get("nodes", 5), _integer(1, NODES_MAX), context)
    validators = _validated("cluster.validators", table.get("validators", min(3, nodes)), _integer(1, nodes), context)
    reputations = table.get("reputations")
    if reputations is not None and (not isinstance(reputations, list) or len(reputations) != nodes
                                    or not all(type(item) is int and 0 <= item <= 10**9 for item in reputations)):
        raise ScenarioFormatError(f"cluster.reputations: must list {nodes} integers from 0 to 1000000000, one per node")
    governance = _parse_governance(table.get("governance", {}), context)
    limits = _parse_limits(table.get("limits", {}), context)
    allow_private = table.get("allow_private_addresses", True)
    if type(allow_private) is not bool:
        raise ScenarioFormatError("cluster.allow_private_addresses: must be true or false")
    provider = _validated("cluster.provider", table.get("provider", "loopback"), _choice(*PROVIDERS), context)
    return ClusterShape(nodes=nodes, validators=validators, reputations=tuple(reputations) if reputations else None,
                        governance=governance, limits=dict(limits), allow_private_addresses=allow_private, provider=provider)


def _parse_limits(table: object, context: _Context) -> dict[str, int]:
    if not isinstance(table, dict):
        raise ScenarioFormatError("cluster.limits: must be a table of integer limits", hint="for example gossip_interval_ms = 100")
    for key, value in table.items():
        if key not in LIMIT_RANGES:
            raise ScenarioFormatError(f"cluster.limits.{key}: unknown limit", hint=f"limits: {', '.join(sorted(LIMIT_RANGES))}")
        _validated(f"cluster.limits.{key}", value, _integer(*LIMIT_RANGES[key]), context)
    return dict(table)


def _parse_governance(table: object, context: _Context) -> dict[str, int]:
    if not isinstance(table, dict):
        raise ScenarioFormatError("cluster.governance: must be a table")
    _check_keys("cluster.governance", table, set(_GOVERNANCE_KEYS))
    governance = {}
    for key, value in table.items():
        path = f"cluster.governance.{key}"
        validate = _voting_period if key == "voting_period" else _integer(0, 99) if key == "approval_threshold_pct" else _integer(1, 100)
        governance[_GOVERNANCE_KEYS[key]] = _validated(path, value, validate, context)
    return governance


def _parse_packages(document: Mapping[str, Any], base_dirs: tuple[Path, ...]) -> tuple[PackageSpec, ...]:
    tables = document.get("packages", [])
    if not isinstance(tables, list) or len(tables) > PACKAGES_MAX:
        raise ScenarioFormatError(f"packages: must be [[packages]] tables, at most {PACKAGES_MAX}")
    specs: list[PackageSpec] = []
    for index, table in enumerate(tables):
        path = f"packages[{index}]"
        if not isinstance(table, dict):
            raise ScenarioFormatError(f"{path}: must be a table")
        _check_keys(path, table, {"name", "source", "corrupt"}, {"name", "source"})
        context = _Context(nodes=0, packages=frozenset(), saved={spec.name: "package" for spec in specs})
        name = _validated(f"{path}.name", table["name"], _new_name, context)
        source = _validated(f"{path}.source", table["source"], _text(1024), context)
        specs.append(PackageSpec(name=name, source=_resolve_source(f"{path}.source", source, base_dirs),
                                 corrupt=_validated(f"{path}.corrupt", table.get("corrupt", False), _boolean, context)))
    return tuple(specs)


def _resolve_source(path: str, source: str, base_dirs: tuple[Path, ...]) -> Path:
    if not source.endswith(PACKAGE_SOURCE_SUFFIXES):
        raise ScenarioFormatError(f"{path}: {source!r} is not a package source", hint=f"give a {', '.join(PACKAGE_SOURCE_SUFFIXES)} file")
    candidate = Path(source)
    if candidate.is_absolute():
        return candidate
    for base in base_dirs:
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    return (base_dirs[0] / candidate).resolve() if base_dirs else candidate  # the build step says it is missing


def parse_scenario(document: Mapping[str, Any], *, path: Path | None = None, base_dirs: tuple[Path, ...] = ()) -> Scenario:
    """Validate a parsed TOML document. Raises ScenarioFormatError naming the first mistake's place."""
    unknown = sorted(set(document) - {"scenario", "cluster", "packages", "steps"})
    if unknown:
        raise ScenarioFormatError(f"{unknown[0]}: unknown top-level key", hint="a scenario has [scenario], [cluster], [[packages]] and [[steps]]")
    header = _parse_header(document)
    shape = _parse_cluster(document)
    packages = _parse_packages(document, base_dirs)
    tables = document.get("steps")
    if not isinstance(tables, list) or not 1 <= len(tables) <= STEPS_MAX:
        raise ScenarioFormatError(f"steps: a scenario needs 1 to {STEPS_MAX} [[steps]] tables", hint='add [[steps]] with do = "..."')
    context = _Context(nodes=shape.nodes, packages=frozenset(package.name for package in packages), saved={})
    steps = tuple(_parse_step(index, table, context) for index, table in enumerate(tables))
    for step in steps:
        if step.do in LINK_FAULT_STEPS and shape.provider != "netns":
            raise ScenarioFormatError(f"{step.path}.do: {step.do!r} needs provider = \"netns\" (the {shape.provider} provider has no {step.do})",
                                      hint='add provider = "netns" to [cluster] (a network namespace per node; needs root: see synapse doctor)')
    return Scenario(path=path, cluster=shape, packages=packages, steps=steps, **header)


def parse_fault_step(table: Mapping[str, Any], *, nodes: int) -> Step:
    """One fault given outside a file (`synapse cluster fault KIND --KEY VALUE`): the same keys and
    validators as a step of a scenario on a cluster of `nodes` nodes; errors name the key as `--key`."""
    try:
        return _parse_step(0, dict(table), _Context(nodes=nodes, packages=frozenset(), saved={}))
    except ScenarioFormatError as error:
        message = re.sub(r"^steps\[0\]\.(\w+)", lambda match: "--" + match.group(1).replace("_", "-"), error.message)
        raise ScenarioFormatError(message.replace("steps[0]: ", ""), hint=error.hint) from None


def load_scenario(path: Path, *, repository: Path | None = None) -> Scenario:
    """Read and validate a scenario file. Package sources are found beside it, then in `repository`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(SCENARIO_SIZE_MAX_BYTES + 1)
    except OSError as error:
        raise ScenarioFormatError(f"{path}: cannot read the scenario file: {error.strerror or error}", hint="check the path") from None
    if len(data) > SCENARIO_SIZE_MAX_BYTES:
        raise ScenarioFormatError(f"{path}: larger than {SCENARIO_SIZE_MAX_BYTES:,} bytes")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ScenarioFormatError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioFormatError(f"{path}: not valid TOML: {error}", hint="check the line named in the message") from None
    base_dirs = (path.resolve().parent,) + ((repository.resolve(),) if repository else ())
    try:
        return parse_scenario(document, path=path, base_dirs=base_dirs)
    except ScenarioFormatError as error:
        raise ScenarioFormatError(f"{path}: {error.message}", hint=error.hint) from None
