"""The JSON documents of governance views (node/core/governance.py, node/core/ratification.py) for the
HTTP API: which fields a user sees, in which shape.

Why here and not on the views: node/core computes verdicts; how they are shown is an API concern (field
names of the spec's endpoints, lists instead of tuples, formatted dates), so it lives beside the API and
can change without touching the pure core.
"""

from __future__ import annotations

from node.core.governance import ExecutionView, ProposalView, RatifyAuditView, ReportView, RollbackView
from node.core.closing import VOTE_ID_SIZE_BYTES
from node.core.ratification import RatificationRecord
from node.core.tally import Tally, VoteRecord
from node.core.utc import format_utc_ms


def tally_document(tally: Tally) -> dict:
    return {"approval_weight": tally.approval_weight, "rejection_weight": tally.rejection_weight,
            "cast_weight": tally.cast_weight, "total_weight": tally.total_weight, "outcome": tally.outcome,
            "decided_early": tally.decided_early}


def vote_document(vote: VoteRecord) -> dict:
    return {"voter": vote.voter, "vote": vote.vote, "weight": vote.weight, "counted": vote.counted,
            "reason": vote.reason, "entry_id": vote.entry_id, "sequence": vote.author_sequence, "cast_ms": vote.cast_ms}


def execution_document(execution: ExecutionView) -> dict:
    return {"sequence": execution.sequence, "entry_id": execution.entry_id,
            "published_by": list(execution.published_by), "certificate_signers": list(execution.certificate_signers)}


def report_document(report: ReportView) -> dict:
    return {"node_id": report.node_id, "sequence": report.sequence, "success": report.success,
            "version": report.version, "state_hash": report.state_hash, "error": report.error,
            "entry_id": report.entry_id}


def rollback_document(rollback: RollbackView) -> dict:
    return {"node_id": rollback.node_id, "restored_version": rollback.restored_version,
            "previous_version": rollback.previous_version, "reason": rollback.reason, "entry_id": rollback.entry_id,
            "rollback_proposal_id": rollback.rollback_proposal_id}


def ratify_audit_document(audit: RatifyAuditView) -> dict:
    return {"validator_id": audit.validator_id, "sequence": audit.sequence, "valid": audit.valid,
            "entry_id": audit.entry_id}


def proposal_summary(view: ProposalView) -> dict:
    """One row of GET /proposals."""
    return {"proposal_id": view.proposal_id, "action": view.action, "title": view.title, "version": view.version,
            "status": view.status, "author": view.author, "created_ms": view.created_ms,
            "voting_deadline_ms": view.voting_deadline_ms, "voting_deadline": format_utc_ms(view.voting_deadline_ms),
            "target_proposal_id": view.target_proposal_id, "closed": view.closed,
            "sequence": view.execution.sequence if view.execution else None, "tally": tally_document(view.tally)}


def proposal_document(view: ProposalView) -> dict:
    """GET /proposals/{id} (the service adds the divergence and the local Raft record)."""
    return {**proposal_summary(view), "description": view.description, "package_url": view.package_url,
            "package_hash": view.package_hash, "package_size": view.package_size, "entry_id": view.entry_id,
            "decided_at_ms": view.decided_at_ms, "votes": [vote_document(vote) for vote in view.votes],
            "votes_digest": view.votes_digest, "closed_by": list(view.closed_by),
            "execution": execution_document(view.execution) if view.execution else None,
            "reports": [report_document(report) for report in view.reports],
            "rollbacks": [rollback_document(rollback) for rollback in view.rollbacks],
            "ratifications": [ratify_audit_document(audit) for audit in view.ratifications], "notes": list(view.notes)}


def ratification_record_document(record: RatificationRecord) -> dict:
    """This validator's copy of the replicated close/ratification state of one proposal."""
    return {"proposal_id": record.proposal_id, "phase": record.phase, "closed_by": list(record.closed_by),
            "votes_digest": record.votes_digest,
            "votes_counted": None if record.vote_ids is None else len(record.vote_ids) // VOTE_ID_SIZE_BYTES,
            "sequence": record.sequence, "action": record.action, "package_hash": record.package_hash,
            "version": record.version, "ratified_by": list(record.ratified_by), "signed_by": list(record.signed_by)}

