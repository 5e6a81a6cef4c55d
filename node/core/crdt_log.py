"""The execution log: a grow-only set of signed entries (a CRDT) with one total order on every node.

Why it works as it does:

Merge is set union. Entries are content-addressed (id = sha256 of the canonical bytes) and immutable,
so adding the same entries in any order, any number of times, gives the same set: add() is
commutative, associative and idempotent by construction.

Refused at the door (add() raises errors.EntryRefused, nothing is stored; the caller counts `.reason`):
  "oversized", "unknown_author", "clock_future" (hlc.wall_ms > now_ms + clock_skew_max_ms),
  "too_many_parents", "bad_sequence", "bad_hlc", "refused_parent", "bad_signature", "log_full",
  "pending_full" (and decode_entry's "malformed", "unknown_kind", "bad_body", "non_canonical").
The signature is verified once, here, and never again. Ids of refused entries are remembered (bounded)
so a replayed bad entry costs a dict lookup, and its descendants are refused as "refused_parent".
Only "clock_future", "log_full" and "pending_full" depend on this node's state or clock; they are not
remembered, and the entry may be accepted when it comes again.

Visibility. An entry is *held* once it passes the door, and *visible* once all its parents are visible
(until then it is PENDING, bounded by pending_max, and its missing parents are listed by
missing_parents() so gossip can pull them by id). The per-entry rules below need the parents, so they
are checked at the door when the parents are visible, and otherwise when the entry becomes visible,
where a failure drops the entry (and its pending descendants) and reports it in AddOutcome.refused:
  - causality of clocks: entry.hlc > every parent's hlc ("bad_hlc"). Hence sorting by (hlc, author, id)
    IS a causal order, and the visible order is simply that sort, the same on every node.
  - a per-author chain, as in Secure Scuttlebutt: an entry with sequence 1 has no parent by its author;
    an entry with sequence k > 1 has exactly one parent by its author, and that parent has sequence
    k-1 ("bad_sequence"). So an author's visible entries have no gaps, and an entry's id commits to its
    author's whole history before it.

Equivocation: two different entries with the same author and sequence are both kept (both are signed,
so both are evidence) and listed by equivocations(); governance voids them. The log never drops one:
any choice would depend on arrival order and break convergence.

Order for consumers. add() returns `newly_visible` in (hlc, author, id) order. An entry that arrives
late can be smaller than entries already visible, so the prefix of visible() is NOT stable: consumers
that fold entries incrementally must either be insensitive to order across independent items
(governance folds per proposal; votes are resolved by author sequence, not by position) or re-fold
from visible(). The upgrade executor orders EXECUTE_UPGRADE by its upgrade sequence, never by log
position. visible() is cached: appended in O(1) while arrivals are in order, sorted (Timsort, nearly
sorted input) only after an out-of-order arrival; repeated calls cost one list copy.

Anti-entropy digest (handles equivocation). A digest maps each author to its *leaves*: the ids (16-byte
prefixes) and sequences of its entries that no later entry of the same author names as parent,
    {author: [[sequence, id_prefix_16_bytes], ...]}   (at most DIGEST_LEAVES_MAX, highest first)
An honest author has exactly one leaf (its latest entry), so the digest is ~40 bytes per author. Because
each id commits to the author's chain before it, a leaf known locally tells exactly which of that
author's entries the remote holds; a highest-sequence digest alone would miss an equivocating twin of
a sequence the remote already has, and a count would miss two nodes holding different twins.
entries_missing_from() sends, in causal order and at most `limit`:
  - first what the remote certainly lacks;
  - then, only in the room left, what it may lack: entries that a leaf we do not know (or a leaf left
    out of a full list) might have as ancestors. Without this split, an author with many twins (the
    smallest clocks of the log) could fill every batch with entries the remote already holds and stall
    anti-entropy for everyone. Pass a fresh random `salt` per call to rotate that filler.
Below the lowest unknown leaf we assume the remote holds our entries: that is the honest case (the
remote is ahead), and it costs no duplicate traffic. A gap that this leaves, only possible with
equivocation, is closed by pulling missing parents by id (missing_parents()) as gossip does. The
property tests check convergence under arbitrary delivery with twins, and zero duplicates without.
A plain int (highest sequence, older peers or tests) is accepted as a digest value too.

Pure: no clock, no I/O. Time comes in as `now_ms`, signatures are checked by the injected `verify`.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import Any, Callable, Iterator, Mapping

from node.core.entries import (ENTRY_SIZE_MAX_BYTES, PARENTS_LENGTH_MAX, SEQUENCE_MAX, Entry, is_node_id, make_entry,
                                signing_prefix)
from node.core.hlc import HLC_ZERO, Hlc, hlc_tick
from node.errors import BadRequest, ConfigError, EntryRefused

DIGEST_LEAVES_MAX = 32
DIGEST_PREFIX_BYTES = 16
DIGEST_AUTHORS_MAX = 10_000
REFUSED_MEMORY_MAX = 4096
SIGNATURE_MEMORY_MAX = 4096

Verify = Callable[[bytes, bytes, bytes], bool]
OrderKey = tuple[int, int, str, str]


def order_key(entry: Entry) -> OrderKey:
    """The total order of visible entries: (hlc, author, id). Causal because hlc grows along parents."""
    return (entry.hlc.wall_ms, entry.hlc.logical, entry.author, entry.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLimits:
    entry_size_max_bytes: int = 64 * 1024
    clock_skew_max_ms: int = 30_000
    pending_max: int = 10_000       # in total; each author may hold at most ceil(pending_max / members)
    parents_max: int = 16
    entries_max: int = 1_000_000

    def __post_init__(self) -> None:
        bounds = {"entry_size_max_bytes": ENTRY_SIZE_MAX_BYTES, "clock_skew_max_ms": 10**12, "pending_max": 10**7,
                  "parents_max": PARENTS_LENGTH_MAX, "entries_max": 10**9}
        for name, maximum in bounds.items():
            value = getattr(self, name)
            minimum = 0 if name == "clock_skew_max_ms" else 1
            if type(value) is not int or not minimum <= value <= maximum:
                raise ConfigError(f"log limit {name} must be an int in {minimum}..{maximum}, got {value!r}")


class AddStatus(Enum):
    ADDED = "added"          # stored and visible (possibly with descendants that were pending)
    DUPLICATE = "duplicate"  # already held (visible or pending): nothing changed
    PENDING = "pending"      # stored, waiting for parents (see missing_parents())


@dataclass(frozen=True, slots=True)
class AddOutcome:
    status: AddStatus
    newly_visible: tuple[Entry, ...]
    # Pending entries dropped when their parents arrived and showed them invalid: (entry id, reason).
    refused: tuple[tuple[str, str], ...] = ()


def parse_digest(digest: object) -> dict[str, tuple[tuple[int, str | None], ...]]:
    """Validate an untrusted digest. Returns author -> ((sequence, id prefix hex | None), ...), where a
    None prefix stands for a plain highest-sequence value. Raises errors.BadRequest when malformed."""
    def bad(what: str) -> BadRequest:
        return BadRequest(f"malformed log digest: {what}", hint="send the value of CrdtLog.digest() as is")

    if not isinstance(digest, Mapping):
        raise bad(f"expected a map, got {type(digest).__name__}")
    if len(digest) > DIGEST_AUTHORS_MAX:
        raise bad(f"{len(digest)} authors (at most {DIGEST_AUTHORS_MAX})")
    parsed: dict[str, tuple[tuple[int, str | None], ...]] = {}
    for author, value in digest.items():
        if not is_node_id(author):
            raise bad("keys must be node ids (16 lowercase hex digits)")
        if type(value) is int:
            if not 0 <= value <= SEQUENCE_MAX:
                raise bad(f"sequence {value} out of range")
            parsed[author] = ((value, None),) if value else ()
            continue
        if not isinstance(value, (list, tuple)) or len(value) > DIGEST_LEAVES_MAX:
            raise bad(f"each author maps to at most {DIGEST_LEAVES_MAX} [sequence, id prefix] pairs")
        leaves = []
        for leaf in value:
            if not (isinstance(leaf, (list, tuple)) and len(leaf) == 2 and type(leaf[0]) is int
                    and 1 <= leaf[0] <= SEQUENCE_MAX and isinstance(leaf[1], bytes) and len(leaf[1]) == DIGEST_PREFIX_BYTES):
                raise bad(f"a leaf is [sequence >= 1, {DIGEST_PREFIX_BYTES}-byte id prefix]")
            leaves.append((leaf[0], leaf[1].hex()))
        parsed[author] = tuple(leaves)
    return parsed


class CrdtLog:
    """The grow-only, signed, causally ordered log. See the module docstring for the rules."""

    def __init__(self, *, network_id: str, members: Mapping[str, bytes], verify: Verify,
                 limits: LogLimits = LogLimits()) -> None:
        """`network_id`: genesis's; entries are signed for it (entries.signing_prefix), so an entry
        signed for another network fails the signature check here."""
        signing_prefix(network_id)  # a bad id is refused now, not at the first entry
        self._network_id = network_id
        for node_id, public_key in members.items():
            if not isinstance(public_key, bytes) or len(public_key) != 32 or hashlib.sha256(public_key).hexdigest()[:16] != node_id:
                raise ConfigError(f"member {str(node_id)[:20]!r} does not match its public key",
                                  hint="a member id is the first 16 hex digits of sha256(its raw 32-byte ed25519 public key)")
        self._members = dict(members)
        self._verify = verify
        self._limits = limits
        self._pending_per_author_max = max(1, math.ceil(limits.pending_max / max(1, len(self._members))))
        self._entries: dict[str, Entry] = {}            # held: visible and pending
        self._visible_ids: set[str] = set()
        self._order: list[Entry] = []                   # visible entries; sorted unless _order_sorted is False
        self._order_sorted = True
        self._chains: dict[str, list[list[str]]] = {}   # author -> ids per sequence (index sequence - 1)
        self._author_parent: dict[str, str | None] = {}  # visible id -> its author's previous entry
        self._leaves: dict[str, set[str]] = {}          # author -> visible ids no later own entry names
        self._forks: dict[str, set[int]] = {}           # author -> sequences held more than once
        self._twin_by_prefix: dict[str, str] = {}       # id prefix -> id, for entries of those sequences
        self._digest_by_author: dict[str, list[list]] = {}  # cache of digest() values
        self._heads: set[str] = set()                   # visible ids that no visible entry names
        self._pending_missing: dict[str, int] = {}      # pending id -> parents not yet visible
        self._waiting: dict[str, set[str]] = {}         # parent id -> pending ids that wait for it
        self._pending_by_author: Counter[str] = Counter()
        self._refused: OrderedDict[str, str] = OrderedDict()
        self._signature_checked: OrderedDict[str, None] = OrderedDict()

    # --- adding ---------------------------------------------------------------------------------

    def add(self, entry: Entry, *, now_ms: int) -> AddOutcome:
        """Admit `entry` (verify it once), store it, and make it and any waiting descendants visible.
        Raises errors.EntryRefused; then nothing changed. Persist an entry before adding it (check()
        tells whether add() will keep it), so that nothing visible is lost in a crash."""
        status = self._admit(entry, now_ms)
        if status is AddStatus.DUPLICATE:
            return AddOutcome(AddStatus.DUPLICATE, ())
        self._entries[entry.id] = entry
        if status is AddStatus.PENDING:
            self._hold_pending(entry)
            return AddOutcome(AddStatus.PENDING, ())
        newly_visible, refused = self._release(entry)
        return AddOutcome(AddStatus.ADDED, tuple(newly_visible), tuple(refused))

    def check(self, entry: Entry, *, now_ms: int) -> AddStatus:
        """What add() would do, without storing anything (e.g. to persist only entries that will be
        kept). Raises EntryRefused like add(); remembers the verified signature so add() skips it."""
        return self._admit(entry, now_ms)

    def _refuse(self, entry_id: str, reason: str, message: str, *, remember: bool = True, hint: str | None = None) -> EntryRefused:
        if remember:
            self._remember_refused(entry_id, reason)
        return EntryRefused(reason, f"entry {entry_id[:12]}: {message}", hint=hint)

    def _admit(self, entry: Entry, now_ms: int) -> AddStatus:
        assert type(now_ms) is int, "now_ms is an int of milliseconds"
        if not isinstance(entry, Entry):
            raise EntryRefused("malformed", f"expected an Entry, got {type(entry).__name__}", hint="decode bytes with decode_entry first")
        entry_id, limits = entry.id, self._limits
        if entry_id in self._entries:
            return AddStatus.DUPLICATE
        if entry_id in self._refused:
            reason = self._refused[entry_id]
            raise EntryRefused(reason, f"entry {entry_id[:12]} was refused before ({reason})")
        if len(entry.raw) > limits.entry_size_max_bytes:
            raise self._refuse(entry_id, "oversized", f"{len(entry.raw)} bytes exceed the limit of {limits.entry_size_max_bytes}")
        public_key = self._members.get(entry.author)
        if public_key is None:
            raise self._refuse(entry_id, "unknown_author", f"author {entry.author} is not a member of this network",
                               hint="only members listed in genesis may write to the log")
        if entry.hlc.wall_ms > now_ms + limits.clock_skew_max_ms:
            raise self._refuse(entry_id, "clock_future", f"its clock is {entry.hlc.wall_ms - now_ms} ms ahead of this node "
                               f"(at most {limits.clock_skew_max_ms})", remember=False, hint="check the clocks of both hosts (NTP)")
        if len(entry.parents) > limits.parents_max:
            raise self._refuse(entry_id, "too_many_parents", f"{len(entry.parents)} parents (at most {limits.parents_max})")
        self._check_parents(entry)
        self._check_signature(entry, public_key)
        if len(self._entries) >= limits.entries_max:
            raise self._refuse(entry_id, "log_full", f"the log holds its maximum of {limits.entries_max} entries",
                               remember=False, hint="raise entries_max or start a new network epoch")
        if all(parent in self._visible_ids for parent in entry.parents):
            return AddStatus.ADDED
        if len(self._pending_missing) >= limits.pending_max or self._pending_by_author[entry.author] >= self._pending_per_author_max:
            raise self._refuse(entry_id, "pending_full", "too many entries are waiting for their parents", remember=False,
                               hint="the entry will be accepted again once its parents have arrived")
        return AddStatus.PENDING

    def _check_parents(self, entry: Entry) -> None:
        if entry.sequence > 1 and not entry.parents:
            raise self._refuse(entry.id, "bad_sequence", f"entry #{entry.sequence} of {entry.author} names no parent")
        for parent in entry.parents:
            if parent in self._refused:
                raise self._refuse(entry.id, "refused_parent", f"its parent {parent[:12]} was refused")
        visible = [self._entries[parent] for parent in entry.parents if parent in self._visible_ids]
        problem = _parent_problem(entry, visible, complete=len(visible) == len(entry.parents))
        if problem is not None:
            raise self._refuse(entry.id, *problem)

    def _check_signature(self, entry: Entry, public_key: bytes) -> None:
        if entry.id in self._signature_checked:
            return
        if not self._verify(public_key, entry.signing_bytes(self._network_id), entry.signature):
            raise self._refuse(entry.id, "bad_signature", f"the signature does not verify with the key of {entry.author} "
                                                          f"for network {self._network_id}")
        self._signature_checked[entry.id] = None
        if len(self._signature_checked) > SIGNATURE_MEMORY_MAX:
            self._signature_checked.popitem(last=False)

    def _remember_refused(self, entry_id: str, reason: str) -> None:
        self._refused[entry_id] = reason
        if len(self._refused) > REFUSED_MEMORY_MAX:
            self._refused.popitem(last=False)

    def _hold_pending(self, entry: Entry) -> None:
        waiting_for = [parent for parent in entry.parents if parent not in self._visible_ids]
        self._pending_missing[entry.id] = len(waiting_for)
        for parent in waiting_for:
            self._waiting.setdefault(parent, set()).add(entry.id)
        self._pending_by_author[entry.author] += 1

    def _release(self, first: Entry) -> tuple[list[Entry], list[tuple[str, str]]]:
        """Make `first` visible, then every pending entry whose last missing parent it was, in order."""
        ready: list[tuple[OrderKey, str]] = [(order_key(first), first.id)]
        newly_visible: list[Entry] = []
        refused: list[tuple[str, str]] = []
        while ready:
            _, entry_id = heapq.heappop(ready)
            entry = self._entries[entry_id]
            if entry is not first:
                problem = _parent_problem(entry, [self._entries[p] for p in entry.parents], complete=True)
                if problem is not None:
                    self._drop_pending(entry_id, problem[0], refused)
                    continue
                self._unhold_pending(entry)
            self._make_visible(entry)
            newly_visible.append(entry)
            for child_id in self._waiting.pop(entry_id, ()):
                self._pending_missing[child_id] -= 1
                if self._pending_missing[child_id] == 0:
                    heapq.heappush(ready, (order_key(self._entries[child_id]), child_id))
        return newly_visible, refused

    def _unhold_pending(self, entry: Entry) -> None:
        del self._pending_missing[entry.id]
        self._pending_by_author[entry.author] -= 1
        if not self._pending_by_author[entry.author]:
            del self._pending_by_author[entry.author]

    def _drop_pending(self, entry_id: str, reason: str, refused: list[tuple[str, str]]) -> None:
        """Forget a pending entry found invalid, and every pending entry that descends from it."""
        doomed = [(entry_id, reason)]
        while doomed:
            doomed_id, why = doomed.pop()
            entry = self._entries.pop(doomed_id)
            self._unhold_pending(entry)
            for parent in entry.parents:
                waiters = self._waiting.get(parent)
                if waiters is not None:
                    waiters.discard(doomed_id)
                    if not waiters:
                        del self._waiting[parent]
            self._remember_refused(doomed_id, why)
            refused.append((doomed_id, why))
            doomed.extend((child, "refused_parent") for child in self._waiting.pop(doomed_id, ()))

    def _make_visible(self, entry: Entry) -> None:
        entry_id, author = entry.id, entry.author
        self._visible_ids.add(entry_id)
        if self._order_sorted and self._order and order_key(entry) < order_key(self._order[-1]):
            self._order_sorted = False
        self._order.append(entry)
        chain = self._chains.setdefault(author, [])
        if entry.sequence == len(chain) + 1:
            chain.append([entry_id])
        else:  # a twin of an entry already visible: equivocation, kept as evidence
            twins = chain[entry.sequence - 1]
            twins.append(entry_id)
            for twin in (twins[0], entry_id) if len(twins) == 2 else (entry_id,):
                self._twin_by_prefix[twin[: 2 * DIGEST_PREFIX_BYTES]] = twin
            self._forks.setdefault(author, set()).add(entry.sequence)
        self._digest_by_author.pop(author, None)
        own_parent = next((p for p in entry.parents if self._entries[p].author == author), None)
        self._author_parent[entry_id] = own_parent
        leaves = self._leaves.setdefault(author, set())
        leaves.add(entry_id)
        leaves.discard(own_parent)
        self._heads.difference_update(entry.parents)
        self._heads.add(entry_id)

    # --- reading --------------------------------------------------------------------------------

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, str) and entry_id in self._entries

    def get(self, entry_id: str) -> Entry | None:
        """A held entry (visible or pending) by id; None for anything else, whatever its type."""
        return self._entries.get(entry_id) if isinstance(entry_id, str) else None

    def __len__(self) -> int:
        """Held entries: visible + pending."""
        return len(self._entries)

    def is_visible(self, entry_id: str) -> bool:
        return isinstance(entry_id, str) and entry_id in self._visible_ids

    def visible_count(self) -> int:
        return len(self._visible_ids)

    def pending_count(self) -> int:
        return len(self._pending_missing)

    def visible(self) -> list[Entry]:
        """Every visible entry in the total order (hlc, author, id): the same list on every node
        that holds the same entries. Cached; see the module docstring for late arrivals."""
        if not self._order_sorted:
            self._order.sort(key=order_key)
            self._order_sorted = True
        return list(self._order)

    def all_entries(self) -> list[Entry]:
        """Every held entry: the visible ones in order, then the pending ones in (hlc, author, id) order."""
        pending = sorted((self._entries[entry_id] for entry_id in self._pending_missing), key=order_key)
        return self.visible() + pending

    def missing_parents(self) -> set[str]:
        """Ids named by pending entries that this log does not hold (nor refused): what gossip should
        pull by id. At most pending_max * parents_max ids."""
        return {parent for parent in self._waiting if parent not in self._entries and parent not in self._refused}

    def equivocations(self) -> list[tuple[str, str]]:
        """Pairs of visible entry ids with the same author and sequence. For k twins of one sequence:
        k-1 pairs (smallest id, other id), so every twin is listed. Sorted."""
        pairs = []
        for author, sequences in self._forks.items():
            for sequence in sequences:
                first, *others = sorted(self._chains[author][sequence - 1])
                pairs.extend((first, other) for other in others)
        return sorted(pairs)

    def next_sequence(self, author: str) -> int:
        return len(self._chains.get(author, ())) + 1

    def latest_of(self, author: str) -> Entry | None:
        """The author's visible entry with the highest sequence (the smallest id among twins)."""
        chain = self._chains.get(author)
        return self._entries[min(chain[-1])] if chain else None

    def heads(self, author: str | None = None) -> tuple[str, ...]:
        """Parents for the next local entry, sorted: the visible entries nobody names yet (the most
        recent first when there are more than parents_max), always including `author`'s latest entry
        when given, which the per-author chain requires."""
        own = self.latest_of(author) if author is not None else None
        chosen = [own.id] if own is not None else []
        # Other heads by `author` can only be twins of its own entries (equivocation): naming one would
        # break the chain rule (exactly one parent by the author).
        others = sorted((self._entries[h] for h in self._heads if self._entries[h].author != author), key=order_key, reverse=True)
        chosen.extend(entry.id for entry in others[: self._limits.parents_max - len(chosen)])
        return tuple(sorted(chosen))

    def _clock_of(self, parents: tuple[str, ...]) -> Hlc:
        return max([self._entries[p].hlc for p in parents] + [HLC_ZERO])

    def clock_floor(self, author: str) -> Hlc:
        """The highest clock among the parents `author`'s next entry would name: its hlc is above this.
        A body that dates itself (a proposal's deadline) must count from here, not from a clock that
        may lie behind it when a peer's clock runs ahead (within clock_skew_max_ms)."""
        return self._clock_of(self.heads(author))

    def new_entry(self, *, kind: str, author: str, body: Mapping[str, Any], sign: Callable[[bytes], bytes], now_ms: int,
                  clock: Hlc | None = None) -> Entry:
        """Build and sign the next entry of `author` (a local identity): next sequence, current heads
        as parents, and an hlc above every parent and above `clock` (the node's own clock, if kept).
        It is NOT added: persist it, then add() it."""
        parents = self.heads(author)
        floor = max(self._clock_of(parents), clock or HLC_ZERO)
        return make_entry(network_id=self._network_id, kind=kind, author=author, sequence=self.next_sequence(author),
                          parents=parents, hlc=hlc_tick(floor, now_ms), body=body, sign=sign)

    # --- anti-entropy -----------------------------------------------------------------------------

    def digest(self) -> dict[str, list[list]]:
        """author -> [[sequence, 16-byte id prefix], ...] of the author's leaves (usually one)."""
        for author, leaves in self._leaves.items():
            if author not in self._digest_by_author:
                top = heapq.nsmallest(DIGEST_LEAVES_MAX, leaves, key=lambda entry_id: (-self._entries[entry_id].sequence, entry_id))
                self._digest_by_author[author] = [
                    [self._entries[entry_id].sequence, bytes.fromhex(entry_id[: 2 * DIGEST_PREFIX_BYTES])] for entry_id in top]
        return {author: [list(leaf) for leaf in value] for author, value in self._digest_by_author.items()}

    def entries_missing_from(self, remote_digest: Mapping[str, Any], *, limit: int, salt: int | None = None) -> list[Entry]:
        """Visible entries that a node with `remote_digest` lacks, at most `limit`, in causal order
        (sorted by (hlc, author, id), so an entry never comes before its parents in a batch).

        Entries the remote certainly lacks come first. Only for an author whose leaf list in the digest
        is full (DIGEST_LEAVES_MAX: heavy equivocation) is it uncertain whether the remote holds that
        author's older entries; those only fill what room is left, so they can never crowd out the
        rest. Pass a fresh random `salt` each round to rotate which uncertain entries fill the room
        (without it the choice is the same every time). Raises errors.BadRequest for a malformed digest."""
        assert type(limit) is int and limit >= 0, "limit is an int >= 0"
        assert salt is None or type(salt) is int, "salt is an int (e.g. rng.getrandbits(64))"
        remote = parse_digest(remote_digest)
        certain_streams, uncertain = [], []
        for author in self._chains:
            certain, maybe = self._missing_of_author(author, remote.get(author, ()))
            certain_streams.append(certain)
            uncertain.extend(maybe)
        batch = list(islice(heapq.merge(*certain_streams, key=order_key), limit))
        room = limit - len(batch)
        if room > 0 and uncertain:
            fill_order = order_key if salt is None else (lambda entry: hashlib.sha256(b"%d:%s" % (salt, entry.id.encode())).digest())
            batch = sorted(batch + heapq.nsmallest(room, uncertain, key=fill_order), key=order_key)
        return batch

    def _missing_of_author(self, author: str, remote_leaves: tuple[tuple[int, str | None], ...]) -> tuple[Iterator[Entry], list[Entry]]:
        """(entries the remote certainly lacks, in order; entries it may lack) for one author.

        A remote leaf we know tells exactly what the remote holds (its chain back to sequence 1). A
        remote leaf we do not know, at sequence u, may have any of our entries below u as ancestors:
        below the lowest such u we assume the remote holds ours (the honest case: it is ahead of us),
        and between the lowest and the highest we are unsure. A full leaf list may omit leaves, all at
        sequences <= its lowest listed one: we are unsure up to there too."""
        chain = self._chains[author]
        known: list[str] = []
        unknown_sequences = []
        for sequence, prefix in remote_leaves:
            match = self._find(author, sequence, prefix)
            if match is not None:
                known.append(match)
            else:
                unknown_sequences.append(sequence + 1 if prefix is None else sequence)
        floor = min(unknown_sequences, default=1)
        unlisted_max = min(sequence for sequence, _ in remote_leaves) if len(remote_leaves) >= DIGEST_LEAVES_MAX else 0
        certain_from = max(max(unknown_sequences, default=0), unlisted_max + 1)
        if author not in self._forks and not unlisted_max:  # one entry per sequence: ranges, no walks
            held_max = max((self._entries[entry_id].sequence for entry_id in known), default=0)
            start = max(held_max + 1, floor)
            middle = max(start, min(certain_from, len(chain) + 1))
            certain = (self._entries[chain[sequence - 1][0]] for sequence in range(middle, len(chain) + 1))
            return certain, [self._entries[chain[sequence - 1][0]] for sequence in range(start, middle)]
        held = self._root_paths(known)
        candidates = [self._entries[entry_id] for twins in chain[floor - 1:] for entry_id in twins if entry_id not in held]
        certain_list = sorted((entry for entry in candidates if entry.sequence >= certain_from), key=order_key)
        return iter(certain_list), [entry for entry in candidates if entry.sequence < certain_from]

    def _find(self, author: str, sequence: int, prefix: str | None) -> str | None:
        """Our visible entry of `author` at `sequence` whose id starts with `prefix`, if any: O(1)."""
        chain = self._chains.get(author, ())
        if prefix is None or not 1 <= sequence <= len(chain):
            return None
        twins = chain[sequence - 1]
        if len(twins) == 1:
            return twins[0] if twins[0].startswith(prefix) else None
        match = self._twin_by_prefix.get(prefix)
        if match is None or self._entries[match].author != author or self._entries[match].sequence != sequence:
            return None
        return match

    def _root_paths(self, leaves: list[str]) -> set[str]:
        """Every entry on the author chains from `leaves` back to sequence 1."""
        held: set[str] = set()
        for cursor in leaves:
            while cursor is not None and cursor not in held:
                held.add(cursor)
                cursor = self._author_parent[cursor]
        return held


def _parent_problem(entry: Entry, visible_parents: list[Entry], *, complete: bool) -> tuple[str, str] | None:
    """(reason, message) if `entry` breaks the hlc or chain rule against its visible parents. With
    `complete` False some parents are not visible yet: only what is known is checked."""
    for parent in visible_parents:
        if not parent.hlc < entry.hlc:
            return ("bad_hlc", f"its hlc {entry.hlc.wall_ms}.{entry.hlc.logical} is not above its parent "
                    f"{parent.id[:12]}'s {parent.hlc.wall_ms}.{parent.hlc.logical}")
    own = [parent for parent in visible_parents if parent.author == entry.author]
    if entry.sequence == 1 and own:
        return ("bad_sequence", f"entry #1 of {entry.author} names an earlier entry of its own author")
    if len(own) > 1 or any(parent.sequence != entry.sequence - 1 for parent in own):
        return ("bad_sequence", f"entry #{entry.sequence} of {entry.author} must name exactly its author's entry "
                f"#{entry.sequence - 1}, and no other of its author's entries")
    if complete and entry.sequence > 1 and not own:
        return ("bad_sequence", f"entry #{entry.sequence} of {entry.author} does not name its author's entry #{entry.sequence - 1}")
    return None
