"""Every request body of the HTTP API and every log entry body, each defined once, as a typed frozen
structure. The API's request checks, the entries' body checks (entries.validate_body) and the request
schemas published at GET /openapi.json (node/openapi.py) all derive from the declarations here.

Why it works as it does:
- One declaration per kind of field (`Title`, `VersionText`, `PackageUrl`...) with its limits in a msgspec
  `Meta`. msgspec validates a body against it (types, lengths, ranges, no unknown or missing field)
  and exports the same constraints as JSON Schema: what a node refuses and what it publishes cannot
  drift apart. msgspec has no length limit of its own, so every str, bytes and list carries one.
- A few rules are functions the project already trusts rather than msgspec constraints: the control
  and bidirectional characters of texts people write (`unsafe_character`), credentials in package URLs
  (`urls.has_userinfo`), versions (`semver.is_valid_version`), package hashes as users spell them
  (`canonical.normalize_sha256`), proposal ids. Each is a `Rule` declared beside its field: the
  function runs after msgspec, in one place (`_rule_problems`), and the rule's `pattern` publishes the
  same rule. tests/unit/test_schemas.py proves that each pattern and its function agree.
- Patterns are written for both dialects that read them: ECMA-262 (JSON Schema clients) and Python's
  `re` (msgspec, jsonschema). So no `\\d` (Python's matches other scripts' digits) and no bare `$`
  (Python's matches before a final newline): "end of text" is `(?![\\s\\S])`.
- Refusals name the field, what is allowed and what to do. msgspec's own messages are terse, so when it
  refuses, `_explain` walks the same declarations to say it in words ("field package_size must be a
  JSON integer or null, not a JSON boolean"); msgspec's verdict stays the one that counts.
- Structs come only out of `check` (msgspec validates when it converts, not when a Struct is called
  directly): requests are parsed into them; entry bodies stay the plain dicts that are signed, and are
  judged as their Struct.
- Entry bodies keep their field sets, types and bytes: this module only judges a body; the canonical
  encoding of the dict stays in node/core/entries.py (golden vectors: tests/unit/test_entry_golden.py).

Pure: no I/O (STYLE rule 1).
"""

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Union

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from msgspec import inspect as msgspec_inspect

from node.core.canonical import normalize_sha256
from node.core.certificates import CERTIFICATE_SIGNATURES_MAX, PROPOSAL_ID_LENGTH_MAX
from node.core.closing import VOTE_ID_SIZE_BYTES, VOTE_IDS_SIZE_MAX_BYTES
from node.core.semver import SEMVER_REGEX, VERSION_LENGTH_MAX, is_valid_version
from node.core.urls import has_userinfo
from node.errors import BadRequest, HashFormatError, SynapseError

TITLE_LENGTH_MAX = 200
DESCRIPTION_LENGTH_MAX = 4000
NOTE_TEXT_LENGTH_MAX = 4096
REASON_LENGTH_MAX = 1000            # a ROLLBACK's reason, an EXECUTION_REPORT's error, a local rollback's reason
PACKAGE_URL_LENGTH_MAX = 2048
PACKAGE_HASH_INPUT_LENGTH_MAX = 128  # as a user may spell it: 'sha256:' + 64 hex, any case, maybe padded
PACKAGE_SIZE_MAX_BYTES = 2**40
STATE_HASH_LENGTH_MAX = 80
STATEMENT_SIZE_MAX_BYTES = 512
SIGNATURE_SIZE_BYTES = 64
SEQUENCE_MAX = 2**53                # far beyond any real author, exact in every JSON reader
HEX64_LENGTH = 64
NODE_ID_LENGTH = 16

# --- texts people write -----------------------------------------------------------------------------

# Texts people write travel to every node and end up on operators' terminals and in reports. None may
# hold a control character (an ESC sequence can rewrite a terminal, a CR hide a line) or a bidirectional
# override (it reorders what a reader sees: "Trojan Source"). Multi-line texts may hold \n and \t;
# one-line texts (titles) neither. Kept as regex escapes so that the published pattern reads the same.
_UNSAFE_IN_TEXT_CLASS = r"\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_IN_LINE_CLASS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_IN_TEXT = re.compile(f"[{_UNSAFE_IN_TEXT_CLASS}]")
_UNSAFE_IN_LINE = re.compile(f"[{_UNSAFE_IN_LINE_CLASS}]")
# What str.strip() removes (str.isspace()), which normalize_sha256 forgives around a hash.
_STRIPPED_CLASS = (r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000")
_END = r"(?![\s\S])"


def unsafe_character(text: str, *, one_line: bool) -> str | None:
    """Where `text` holds a character no human-written text may hold: "U+001B at position 3"; else None."""
    match = (_UNSAFE_IN_LINE if one_line else _UNSAFE_IN_TEXT).search(text)
    return None if match is None else f"U+{ord(match.group()):04X} at position {match.start()}"


def safe_text(text: str) -> str:
    """`text` with every character unsafe_character(one_line=False) would name replaced by U+FFFD (for
    texts a node composes from outside input, such as a package's trap message)."""
    return _UNSAFE_IN_TEXT.sub("\ufffd", text)


def whole(regex: str) -> str:
    """A pattern that matches exactly the texts `regex` matches whole, in ECMA-262 and in Python alike."""
    return f"^(?:{regex}){_END}"


def none_of(character_class: str) -> str:
    """A pattern that matches the texts holding no character of `character_class`."""
    return f"^(?![\\s\\S]*[{character_class}])"


# --- rules beyond msgspec's constraints ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A check that runs after msgspec, beside the pattern that publishes it (None for bytes).
    `problem(name, value)` says what is wrong with the value, or None; `hint` says what to do
    ("{name}" is the field); `error` is the error raised at the API (HTTP 400 either way)."""
    pattern: str | None
    problem: Callable[[str, Any], str | None]
    hint: str
    error: type[SynapseError] = BadRequest


def _unsafe_problem(one_line: bool) -> Callable[[str, Any], str | None]:
    def problem(name: str, value: Any) -> str | None:
        where = unsafe_character(value, one_line=one_line)
        return None if where is None else f"{name} holds a control or bidirectional-override character ({where})"
    return problem


def _version_problem(name: str, value: Any) -> str | None:
    return None if is_valid_version(value) else f"{name} {value[:80]!r} is not semver: use MAJOR.MINOR.PATCH, e.g. '1.2.0'"


def _credentials_problem(name: str, value: Any) -> str | None:
    # The URL is not echoed: it holds a secret.
    if not has_userinfo(value):
        return None
    return (f"{name} holds credentials (user:password@ before the host); a proposal's URL is shown to every member "
            "and on the open GET /proposals and GET /log")


def _hash_problem(name: str, value: Any) -> str | None:
    return None if normalize_sha256(value) is not None else f"{name} {value[:80]!r} is not a SHA256 digest"


_PROPOSAL_ID_REGEX = "(?:upgrade|rollback)_[0-9]{8}_[0-9]{6}_[0-9a-f]{8}"
PROPOSAL_ID_FULL = re.compile(whole(_PROPOSAL_ID_REGEX))


def _proposal_id_problem(name: str, value: Any) -> str | None:
    return None if PROPOSAL_ID_FULL.search(value) else f"{name} {value[:100]!r} is not a proposal id"


def _vote_ids_problem(name: str, value: Any) -> str | None:
    return None if len(value) % VOTE_ID_SIZE_BYTES == 0 else f"{name} must be whole {VOTE_ID_SIZE_BYTES}-byte ids"


ONE_LINE_TEXT = Rule(pattern=none_of(_UNSAFE_IN_LINE_CLASS), problem=_unsafe_problem(True),
                     hint="{name} may hold printable characters on one line only")
MULTI_LINE_TEXT = Rule(pattern=none_of(_UNSAFE_IN_TEXT_CLASS), problem=_unsafe_problem(False),
                       hint="{name} may hold printable characters, newlines and tabs only")
SEMVER = Rule(pattern=whole(SEMVER_REGEX), problem=_version_problem, hint="give {name} as MAJOR.MINOR.PATCH, e.g. '1.2.0'")
NO_CREDENTIALS = Rule(pattern="^(?!(?:(?!://)[\\s\\S])*://[^/?#]*@)", problem=_credentials_problem,
                      hint="publish the package where every node can fetch it without credentials, "
                           "or use ipfs://CID through the nodes' IPFS gateways")
SHA256_AS_GIVEN = Rule(pattern=whole(f"[{_STRIPPED_CLASS}]*(?:[sS][hH][aA]256:)?[0-9a-fA-F]{{64}}[{_STRIPPED_CLASS}]*"),
                       problem=_hash_problem, hint=HashFormatError.default_hint, error=HashFormatError)
PROPOSAL_ID = Rule(pattern=PROPOSAL_ID_FULL.pattern, problem=_proposal_id_problem,
                   hint="a proposal id looks like upgrade_20251003_120000_3fa9c2d1 (see GET /proposals)")
VOTE_IDS = Rule(pattern=None, problem=_vote_ids_problem, hint="pack the counted votes with closing.pack_vote_ids")


# --- field kinds: each declared once ------------------------------------------------------------------


def _string(length_max: int, *, length_min: int = 0, rule: Rule | None = None, pattern: str | None = None,
            description: str | None = None) -> Any:
    return Annotated[str, Meta(min_length=length_min or None, max_length=length_max, pattern=pattern,
                               description=description,
                               extra_json_schema={"pattern": rule.pattern} if rule and rule.pattern else None,
                               extra={"rule": rule} if rule else None)]


Title = _string(TITLE_LENGTH_MAX, length_min=1, rule=ONE_LINE_TEXT)
Description = _string(DESCRIPTION_LENGTH_MAX, rule=MULTI_LINE_TEXT)
NoteText = _string(NOTE_TEXT_LENGTH_MAX, rule=MULTI_LINE_TEXT)
Reason = _string(REASON_LENGTH_MAX, rule=MULTI_LINE_TEXT)
VersionText = _string(VERSION_LENGTH_MAX, rule=SEMVER, description="semver, e.g. 1.2.0")
PackageUrl = _string(PACKAGE_URL_LENGTH_MAX, length_min=1, rule=NO_CREDENTIALS,
                     description="https://, http:// or ipfs://CID, without credentials")
PackageHashAsGiven = _string(PACKAGE_HASH_INPUT_LENGTH_MAX, rule=SHA256_AS_GIVEN,
                             description="'sha256:' + 64 hex digits, or 64 bare hex digits")
ProposalIdAsGiven = _string(PROPOSAL_ID_LENGTH_MAX, rule=PROPOSAL_ID,
                            description="a proposal id, e.g. upgrade_20251003_120000_3fa9c2d1")
# In entries a proposal id is any short text: the fold checks ids against their author (proposals.py).
ProposalIdText = _string(PROPOSAL_ID_LENGTH_MAX, length_min=1)
Hex64 = _string(HEX64_LENGTH, pattern=whole("[0-9a-f]{64}"))
NodeId = _string(NODE_ID_LENGTH, pattern=whole("[0-9a-f]{16}"))
StateHash = _string(STATE_HASH_LENGTH_MAX)
PackageSize = Annotated[int, Meta(ge=1, le=PACKAGE_SIZE_MAX_BYTES, description="the package's size in bytes",
                                  extra={"hint": "give the exact size of the .wasm file (ls -l), or leave package_size out"})]
Sequence = Annotated[int, Meta(ge=1, le=SEQUENCE_MAX)]
UnixMs = Annotated[int, Meta(ge=0, le=SEQUENCE_MAX)]
Signature = Annotated[bytes, Meta(min_length=SIGNATURE_SIZE_BYTES, max_length=SIGNATURE_SIZE_BYTES)]
Statement = Annotated[bytes, Meta(max_length=STATEMENT_SIZE_MAX_BYTES)]
VoteIds = Annotated[bytes, Meta(max_length=VOTE_IDS_SIZE_MAX_BYTES, extra={"rule": VOTE_IDS})]
Action = Literal["upgrade", "rollback"]
VoteChoice = Literal["approval", "rejection"]


class _Body(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every body: frozen, keyword-only, and no field it does not declare."""


# --- the API's request bodies (named as in /openapi.json's components) --------------------------------


class ProposeUpgrade(_Body):
    """POST /upgrades/propose: a PROPOSAL of action "upgrade"; voting starts."""
    title: Title
    version: VersionText
    package_url: PackageUrl
    package_hash: PackageHashAsGiven
    description: Description = ""
    package_size: Optional[PackageSize] = None


class ProposeRollback(_Body):
    """POST /rollbacks/propose: a network-wide rollback of the latest executed upgrade."""
    target_proposal_id: ProposalIdAsGiven
    title: Union[Title, UnsetType] = UNSET
    description: Union[Description, UnsetType] = UNSET


class Vote(_Body):
    """POST /proposals/{proposal_id}/vote: this node's vote."""
    vote: VoteChoice


class TestUpgrade(_Body):
    """POST /upgrades/{proposal_id}/test: a dry run takes no parameters (the body may be left out)."""
    __test__ = False    # not a pytest test class, whatever its name


class LocalRollback(_Body):
    """POST /upgrades/{proposal_id}/rollback: the operator's reason, kept in the ROLLBACK audit entry."""
    reason: Union[Reason, UnsetType] = UNSET


class Note(_Body):
    """POST /log/notes: a NOTE entry."""
    text: NoteText


REQUEST_BODIES: tuple[type[Struct], ...] = (ProposeUpgrade, ProposeRollback, Vote, TestUpgrade, LocalRollback, Note)


# --- log entry bodies: every field present (None where allowed) ----------------------------------------


class ProposalBody(_Body):
    proposal_id: ProposalIdText
    action: Action
    title: Title
    description: Description
    version: VersionText
    package_url: Optional[PackageUrl]
    package_hash: Optional[Hex64]
    package_size: Optional[PackageSize]
    voting_deadline_ms: UnixMs
    target_proposal_id: Optional[ProposalIdText]


class VoteBody(_Body):
    proposal_id: ProposalIdText
    vote: VoteChoice


class CloseBody(_Body):
    """A validator's attestation of the votes Raft counted when voting closed (node/core/closing.py)."""
    proposal_id: ProposalIdText
    votes_digest: Hex64
    vote_ids: VoteIds


class RatifyBody(_Body):
    proposal_id: ProposalIdText
    sequence: Sequence
    statement: Statement
    signature: Signature


class CertificateSignature(_Body):
    signature: Signature
    validator_id: NodeId


class ExecuteUpgradeBody(_Body):
    proposal_id: ProposalIdText
    action: Action
    version: VersionText
    package_url: Optional[PackageUrl]
    package_hash: Optional[Hex64]
    package_size: Optional[PackageSize]
    votes_digest: Hex64
    sequence: Sequence
    certificate: Annotated[list[CertificateSignature], Meta(max_length=CERTIFICATE_SIGNATURES_MAX)]


class ExecutionReportBody(_Body):
    proposal_id: ProposalIdText
    sequence: Sequence
    success: bool
    version: VersionText
    state_hash: StateHash
    error: Optional[Reason]


class RollbackBody(_Body):
    proposal_id: ProposalIdText
    restored_version: VersionText
    previous_version: VersionText
    state_hash: StateHash
    reason: Reason


class NoteBody(_Body):
    text: NoteText


ENTRY_BODIES: Mapping[str, type[Struct]] = {
    "PROPOSAL": ProposalBody, "VOTE": VoteBody, "CLOSE": CloseBody, "RATIFY": RatifyBody,
    "EXECUTE_UPGRADE": ExecuteUpgradeBody, "EXECUTION_REPORT": ExecutionReportBody, "ROLLBACK": RollbackBody,
    "NOTE": NoteBody,
}


def _inconsistency(kind: str, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """Rules between the fields of an entry body: (what is wrong, what to do), or None."""
    if kind == "PROPOSAL" and body["action"] == "upgrade":
        if body["package_url"] is None or body["package_hash"] is None:
            return "an upgrade proposal needs package_url and package_hash", "give the package's URL and SHA256 digest"
        if body["target_proposal_id"] is not None:
            return "an upgrade proposal has no target_proposal_id", "omit target_proposal_id"
    if kind == "PROPOSAL" and body["action"] == "rollback":
        if any(body[name] is not None for name in ("package_url", "package_hash", "package_size")):
            return "a rollback proposal has no package", "omit package_url, package_hash and package_size"
        if body["target_proposal_id"] is None:
            return ("a rollback proposal needs target_proposal_id (the executed upgrade to undo)",
                    "give the id of the executed upgrade to undo (GET /proposals)")
    if kind == "EXECUTE_UPGRADE" and body["action"] == "upgrade":
        if body["package_url"] is None or body["package_hash"] is None:
            return "an EXECUTE_UPGRADE of an upgrade needs package_url and package_hash", "copy them from the proposal"
    return None


# --- judging a body -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a body: the top-level field (None: the body as a whole), what, what to do."""
    field: str | None
    message: str
    hint: str
    error: type[SynapseError] = BadRequest

    def raise_it(self) -> None:
        raise self.error(self.message, hint=self.hint)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    required: bool
    info: Any           # msgspec.inspect type of the field
    rule: Rule | None


def _rule_of(info: Any) -> Rule | None:
    for option in info.types if isinstance(info, msgspec_inspect.UnionType) else (info,):
        if isinstance(option, msgspec_inspect.Metadata) and option.extra and "rule" in option.extra:
            return option.extra["rule"]
    return None


def _fields_of(struct_type: type[Struct]) -> tuple[_Field, ...]:
    info = msgspec_inspect.type_info(struct_type)
    return tuple(_Field(field.name, field.required, field.type, _rule_of(field.type)) for field in info.fields)


_FIELDS: Mapping[type[Struct], tuple[_Field, ...]] = {
    struct_type: _fields_of(struct_type)
    for struct_type in (*REQUEST_BODIES, *ENTRY_BODIES.values(), CertificateSignature)
}


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean",
            bytes: "bytes", type(None): "null"}.get(type(value), type(value).__name__)


def _options(info: Any) -> tuple[Any, bool]:
    """(the one non-null type of a field, whether null is allowed)."""
    options = info.types if isinstance(info, msgspec_inspect.UnionType) else (info,)
    others = [option for option in options if not isinstance(option, msgspec_inspect.NoneType)]
    assert len(others) == 1, f"a body field has one type besides null, not {others}"
    return others[0], len(others) < len(options)


def _base(info: Any) -> tuple[Any, Any]:
    """(the type without its Metadata wrapper, the Metadata or None)."""
    return (info.type, info) if isinstance(info, msgspec_inspect.Metadata) else (info, None)


_KIND_NAMES = {msgspec_inspect.StrType: "string", msgspec_inspect.LiteralType: "string", msgspec_inspect.IntType: "integer",
               msgspec_inspect.BoolType: "boolean", msgspec_inspect.BytesType: "bytes", msgspec_inspect.ListType: "array",
               msgspec_inspect.StructType: "object"}


def _kind_name(info: Any) -> str:
    base, _ = _base(_options(info)[0])
    return _KIND_NAMES[type(base)] + (" or null" if _options(info)[1] else "")


def _has_type(base: Any, value: Any) -> bool:
    if isinstance(base, (msgspec_inspect.StrType, msgspec_inspect.LiteralType)):
        return isinstance(value, str)
    if isinstance(base, msgspec_inspect.IntType):
        return type(value) is int
    if isinstance(base, msgspec_inspect.BoolType):
        return type(value) is bool
    if isinstance(base, msgspec_inspect.BytesType):
        return type(value) is bytes
    if isinstance(base, msgspec_inspect.ListType):
        return isinstance(value, list)
    assert isinstance(base, msgspec_inspect.StructType), f"no check for {base}"
    return isinstance(value, dict)


def fields_example(struct_type: type[Struct]) -> str:
    """`"title": <string>, "description"?: <string>` for hints: what a body of this type holds."""
    return ", ".join(f'"{field.name}"{"" if field.required else "?"}: <{_kind_name(field.info)}>'
                     for field in _FIELDS[struct_type])


def _length_problem(name: str, length: int, length_min: int | None, length_max: int | None, unit: str) -> str | None:
    if (length_min is None or length >= length_min) and (length_max is None or length <= length_max):
        return None
    allowed = f"{length_min} to {length_max}" if length_min else f"at most {length_max}"
    noun = "a string" if unit == "characters" else "a byte string" if unit == "bytes" else "a list"
    return f"{name} must be {noun} of {allowed} {unit}, not {length}"


def _constraint_problem(name: str, base: Any, metadata: Any, value: Any, what: str) -> Problem | None:
    """The first constraint of `base` that `value` (already of the right type) breaks."""
    if isinstance(base, msgspec_inspect.StrType):
        text = _length_problem(name, len(value), base.min_length, base.max_length, "characters")
        if text is not None:
            return Problem(name, text, f"shorten {name}" if len(value) > (base.max_length or 0) else f"fill in {name}")
        if base.pattern is not None and re.search(base.pattern, value) is None:
            return Problem(name, f"{name} {value[:80]!r} does not match the pattern {base.pattern}", f"give {name} in that form")
    elif isinstance(base, msgspec_inspect.BytesType):
        text = _length_problem(name, len(value), base.min_length, base.max_length, "bytes")
        if text is not None:
            return Problem(name, text, f"give {name} of the right size")
    elif isinstance(base, msgspec_inspect.IntType):
        if not (base.ge is None or value >= base.ge) or not (base.le is None or value <= base.le):
            what_it_is = metadata.extra_json_schema.get("description") if metadata and metadata.extra_json_schema else None
            shown = value if abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
            text = (f"{name} must be {what_it_is} ({base.ge} to {base.le}), not {shown}" if what_it_is
                    else f"{name} must be an integer from {base.ge} to {base.le}, not {shown}")
            hint = (metadata.extra or {}).get("hint") if metadata else None
            return Problem(name, text, hint or f"give {name} from {base.ge} to {base.le}")
    elif isinstance(base, msgspec_inspect.LiteralType):
        if value not in base.values:
            choices = " or ".join(json.dumps(choice) for choice in base.values)
            return Problem(name, f"{name} must be {choices}, not {value[:40]!r}",
                           "send " + " or ".join(f'{{"{name}": {json.dumps(choice)}}}' for choice in base.values))
    elif isinstance(base, msgspec_inspect.ListType):
        text = _length_problem(name, len(value), base.min_length, base.max_length, "items")
        if text is not None:
            return Problem(name, text, f"shorten {name}")
        for index, item in enumerate(value):
            problem = _value_problem(f"{name}[{index}]", base.item_type, item, what, None)
            if problem is not None:
                return problem
    elif isinstance(base, msgspec_inspect.StructType):
        problems = _explain(base.cls, value, what, prefix=f"{name}.")
        return problems[0] if problems else None
    return None


def _value_problem(name: str, info: Any, value: Any, what: str, rule: Rule | None) -> Problem | None:
    option, nullable = _options(info)
    if value is None and nullable:
        return None
    base, metadata = _base(option)
    if value is None or not _has_type(base, value):
        return Problem(name, f"{what}: field {name} must be a JSON {_kind_name(info)}, not a JSON {_json_type(value)}",
                       f"give {name} as a JSON {_kind_name(info)}")
    problem = _constraint_problem(name, base, metadata, value, what)
    if problem is None and rule is not None:
        text = rule.problem(name, value)
        problem = None if text is None else Problem(name, text, rule.hint.format(name=name), rule.error)
    return problem


def _explain(struct_type: type[Struct], data: Any, what: str, *, prefix: str = "") -> list[Problem]:
    """Every problem of `data` as a `struct_type`, in field order (an empty list: none found)."""
    example = fields_example(struct_type)
    if not isinstance(data, dict):
        return [Problem(None, f"{what}: the body must be a JSON object, not a JSON {_json_type(data)}", f"send {{{example}}}")]
    fields = _FIELDS[struct_type]
    names = {field.name for field in fields}
    unknown = sorted(str(name)[:40] for name in data if name not in names)
    missing = [field.name for field in fields if field.required and field.name not in data]
    problems = []
    if unknown:
        problems.append(Problem(None, f"{what}: unknown field(s) {', '.join(prefix + name for name in unknown[:5])}",
                                f"the fields are {{{example}}}"))
    if missing:
        problems.append(Problem(None, f"{what}: missing field(s) {', '.join(prefix + name for name in missing)}",
                                f"the fields are {{{example}}}"))
    for field in fields:
        if field.name in data:
            problem = _value_problem(prefix + field.name, field.info, data[field.name], what, field.rule)
            if problem is not None:
                problems.append(Problem(field.name, problem.message, problem.hint, problem.error))
    return problems


def _rule_problems(struct_type: type[Struct], data: Mapping[str, Any]) -> list[Problem]:
    """The rules of the fields present (msgspec has checked their types): the one place they run."""
    problems = []
    for field in _FIELDS[struct_type]:
        value = data.get(field.name)
        if field.rule is not None and value is not None:
            text = field.rule.problem(field.name, value)
            if text is not None:
                problems.append(Problem(field.name, text, field.rule.hint.format(name=field.name), field.rule.error))
    return problems


def check(struct_type: type[Struct], data: Any, *, what: str) -> tuple[Struct | None, list[Problem]]:
    """(the typed body, []) when `data` is a valid `struct_type`, else (None, what is wrong: never empty).
    msgspec decides the types and limits; the rules run after it."""
    try:
        value = msgspec.convert(data, struct_type, strict=True, builtin_types=(bytes,))
    except msgspec.ValidationError as error:
        return None, _explain(struct_type, data, what) or [Problem(None, f"{what}: {error}", f"send {{{fields_example(struct_type)}}}")]
    problems = _rule_problems(struct_type, data)
    return (None, problems) if problems else (value, [])


def parse_request(struct_type: type[Struct], data: Any, *, what: str) -> Any:
    """The typed request body, or the first problem raised as a 400 (BadRequest, HashFormatError)."""
    value, problems = check(struct_type, data, what=what)
    if problems:
        problems[0].raise_it()
    return value


def entry_body_problem(kind: str, body: Any) -> tuple[str, str] | None:
    """(message, hint) when `body` is not a valid body of entry kind `kind` (a KINDS member); else None."""
    struct_type = ENTRY_BODIES[kind]
    if not isinstance(body, dict):
        return f"{kind} body must be a map, got {type(body).__name__}", f"a {kind} body is a map"
    names = {field.name for field in _FIELDS[struct_type]}
    missing, unknown = sorted(names - set(body)), sorted(str(name) for name in set(body) - names)
    if missing or unknown:
        return (f"{kind} body has missing fields {missing} and unknown fields {unknown[:5]}",
                f"a {kind} body has exactly the fields {sorted(names)}")
    _, problems = check(struct_type, body, what=kind)
    if problems:
        invalid = sorted({problem.field or "?" for problem in problems})
        return (f"{kind} body has invalid fields {invalid}: {problems[0].message}",
                "see the body schemas in node/core/schemas.py (types, lengths, None where allowed)")
    inconsistency = _inconsistency(kind, body)
    if inconsistency is not None:
        return f"{kind} body is inconsistent: {inconsistency[0]}", inconsistency[1]
    return None


def check_new_body(kind: str, body: Mapping[str, Any]) -> None:
    """Raise BadRequest (or HashFormatError) with what to fix when a body this node is about to sign from
    a user's request is invalid: the same judgement as entry_body_problem, in the API's words."""
    _, problems = check(ENTRY_BODIES[kind], dict(body), what=f"a {kind} body")
    if problems:
        problems[0].raise_it()
    inconsistency = _inconsistency(kind, body)
    if inconsistency is not None:
        raise BadRequest(inconsistency[0], hint=inconsistency[1])
