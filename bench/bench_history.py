"""Cost per new entry as history grows: does a node get slower the longer its network lives?

Three pure pieces, each measured at 1k, 10k and 100k entries (or records) already held:
- the CRDT log's visibility of one new entry: `CrdtLog.add` of the next entry of an author (parents =
  the current heads, as `new_entry` builds them), which makes it visible;
- the governance fold of that entry: `GovernanceFold.on_visible` (the node's fold: `Governance.apply`,
  the log's equivocations, divergence checks), for a new PROPOSAL and for a new VOTE;
- the ratification state machine's apply: `RatificationMachine.close` and `.ratify` of a new proposal
  with that many certified records held (as bench_raft.py's apply cost).

The history is one log built entry by entry: 20 members, each proposal followed by 19 votes (so 100k
entries hold 5,000 proposals); at each size the next `--samples` entries of each kind are timed one
by one (median, µs). Signatures are stubbed (a constant; verification returns True): the signature
check costs the same at any size, and it would hide what grows.

It asserts nothing: it prints a table and writes JSON to bench/results/. `--tree PATH` measures the code
of another source tree (e.g. an export of main) with this same script. From the repository root:

    .venv/bin/python bench/bench_history.py
    .venv/bin/python bench/bench_history.py --tree /tmp/main-export --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SCRIPT_REPOSITORY = Path(__file__).resolve().parent.parent
MEMBERS = 20
VOTES_PER_PROPOSAL = 19
START_MS = 1_760_000_000_000
STEP_MS = 1_000                       # wall clock between two entries of the history
SIGNATURE = b"\x01" * 64
PACKAGE_HASH = "ab" * 32


def load(tree: Path):
    """Import the pieces from `tree` (this script's repository by default)."""
    sys.path.insert(0, str(tree))
    global hashlib, CrdtLog, LogLimits, Governance, GovernanceFold, Metrics, RatificationMachine, RatificationLimits
    global EMPTY_VOTES_DIGEST, make_proposal_id
    import hashlib
    from node.core.closing import EMPTY_VOTES_DIGEST
    from node.core.crdt_log import CrdtLog, LogLimits
    from node.core.governance import Governance
    from node.core.proposals import make_proposal_id
    from node.core.ratification import RatificationLimits, RatificationMachine
    from node.governance_fold import GovernanceFold
    from node.metrics import Metrics
    return tree


def member_keys() -> dict[str, bytes]:
    keys = {}
    for index in range(MEMBERS):
        public_key = hashlib.sha256(f"bench-history-member-{index}".encode()).digest()
        keys[hashlib.sha256(public_key).hexdigest()[:16]] = public_key
    return keys


class History:
    """A log, a governance fold over it, and the next entry of the workload."""

    def __init__(self) -> None:
        self.keys = member_keys()
        self.authors = sorted(self.keys)
        self.network_id = "bench-history"
        self.log = CrdtLog(network_id=self.network_id, members=self.keys, verify=lambda *_: True,
                           limits=LogLimits(entries_max=10_000_000, clock_skew_max_ms=10**12))
        validators = dict(list(self.keys.items())[:3])
        governance = Governance(network_id=self.network_id, validators=validators, verify=lambda *_: True,
                                local_node_id=self.authors[0])
        self.fold = GovernanceFold(governance=governance, log=self.log, node_id=self.authors[0], network_id=self.network_id,
                                   validators=validators, metrics=Metrics(), state=lambda: {}, now_ms=lambda: self.now_ms)
        self.now_ms = START_MS
        self.count = 0
        self.proposals = 0
        self.current_proposal: str | None = None

    def _entry(self, kind: str, author: str, body: dict):
        self.now_ms += STEP_MS
        return self.log.new_entry(kind=kind, author=author, body=body, sign=lambda _: SIGNATURE, now_ms=self.now_ms)

    def next_proposal(self):
        self.proposals += 1
        author = self.authors[self.proposals % MEMBERS]
        proposal_id = make_proposal_id("upgrade", self.now_ms + STEP_MS, author, self.log.next_sequence(author))
        self.current_proposal = proposal_id
        body = {"proposal_id": proposal_id, "action": "upgrade", "title": f"Upgrade {self.proposals}",
                "description": "bench", "version": f"1.{self.proposals}.0", "package_url": "https://example.org/u.wasm",
                "package_hash": PACKAGE_HASH, "package_size": 1024, "voting_deadline_ms": self.now_ms + 30_000,
                "target_proposal_id": None}
        return self._entry("PROPOSAL", author, body)

    def next_vote(self, voter_number: int):
        author = self.authors[voter_number % MEMBERS]
        return self._entry("VOTE", author, {"proposal_id": self.current_proposal, "vote": "approval"})

    def add(self, entry) -> tuple[float, float]:
        """Add one entry to the log, fold what became visible; (log µs, fold µs)."""
        started = time.perf_counter()
        outcome = self.log.add(entry, now_ms=self.now_ms)
        added = time.perf_counter()
        self.fold.on_visible(outcome.newly_visible)
        folded = time.perf_counter()
        assert outcome.newly_visible == (entry,), "the workload's entries are visible at once"
        self.count += 1
        return (added - started) * 1e6, (folded - added) * 1e6

    def grow_to(self, size: int) -> None:
        while self.count < size:
            position = self.count % (VOTES_PER_PROPOSAL + 1)
            self.add(self.next_proposal() if position == 0 else self.next_vote(position))

    def measure(self, samples: int) -> dict:
        proposal_log, proposal_fold, vote_log, vote_fold = [], [], [], []
        for _ in range(samples):
            log_us, fold_us = self.add(self.next_proposal())
            proposal_log.append(log_us)
            proposal_fold.append(fold_us)
            log_us, fold_us = self.add(self.next_vote(1))
            vote_log.append(log_us)
            vote_fold.append(fold_us)
        return {"log_add_us": round(statistics.median(proposal_log + vote_log), 2),
                "fold_proposal_us": round(statistics.median(proposal_fold), 2),
                "fold_vote_us": round(statistics.median(vote_fold), 2),
                "problems": sum(self.fold.governance.problem_counts().values())}


def ratification_cost(records_held: int, samples: int) -> dict:
    """Median µs of one close and one ratify of a new proposal with `records_held` certified records."""
    keys = member_keys()
    validators = dict(list(keys.items())[:3])
    names = list(validators)
    records = [[f"held-{n:06d}", "certified", n + 1, ["upgrade", PACKAGE_HASH, "1.0.0"],
                [[v, "upgrade", PACKAGE_HASH, "1.0.0", SIGNATURE] for v in names[:2]],
                [[v, SIGNATURE] for v in names[:2]], [[v, b""] for v in names[:2]], b""]
               for n in range(records_held)]
    machine = RatificationMachine.from_plain(
        {"format": 2, "next_sequence": records_held + 1, "records": records}, network_id="bench-history",
        validators=validators, verify=lambda *_: True, limits=RatificationLimits(pending_per_validator_max=samples + 1))
    closes, ratifies = [], []
    for number in range(samples):
        proposal_id = f"new-{number:06d}"
        for closer in names[:2]:
            started = time.perf_counter()
            machine.close(proposal_id=proposal_id, vote_ids=b"", validator_id=closer, signature=SIGNATURE)
            closes.append(time.perf_counter() - started)
        started = time.perf_counter()
        machine.ratify(proposal_id=proposal_id, action="upgrade", package_hash=PACKAGE_HASH, version="1.0.0",
                       votes_digest=EMPTY_VOTES_DIGEST, validator_id=names[0], signature=SIGNATURE)
        ratifies.append(time.perf_counter() - started)
    return {"close_us": round(statistics.median(closes) * 1e6, 2), "ratify_us": round(statistics.median(ratifies) * 1e6, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--samples", type=int, default=200, help="timed entries (and commands) of each kind per size")
    parser.add_argument("--tree", type=Path, default=SCRIPT_REPOSITORY, help="source tree whose code is measured")
    arguments = parser.parse_args()
    tree = load(arguments.tree.resolve())
    history = History()
    rows = []
    for size in sorted(arguments.sizes):
        built = time.perf_counter()
        history.grow_to(size)
        row = {"entries": size, "build_s": round(time.perf_counter() - built, 1), **history.measure(arguments.samples),
               **ratification_cost(size, arguments.samples)}
        rows.append(row)
        print(f"{size:>7,} held: log add {row['log_add_us']:7.1f} µs, fold proposal {row['fold_proposal_us']:7.1f} µs, "
              f"fold vote {row['fold_vote_us']:7.1f} µs, ratification close {row['close_us']:7.1f} µs, "
              f"ratify {row['ratify_us']:7.1f} µs (fold problems so far: {row['problems']})", flush=True)
    results = SCRIPT_REPOSITORY / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"bench_history-{stamp}.json").write_text(json.dumps({"tree": str(tree), "rows": rows}, indent=2) + "\n")
    print(f"tree {tree}; written: bench/results/bench_history-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
