"""Every error the project raises on purpose comes from this module.

Why one module: the HTTP API, the CLI and the scenario runner all turn errors into something a user
reads, and they must agree on three things for each error: a one-line message that says what went
wrong, a hint that says what to do, and whether the failure is *definite* (it certainly did not
happen, nothing changed) or *indefinite* (it may have happened: check before retrying). The HTTP
status lives here too so the API maps errors in one place.

Programmer errors are `assert`s and never subclasses of `SynapseError`.
"""

from __future__ import annotations


class SynapseError(Exception):
    """Base of every operating error. `str(error)` is the one-line message shown to users."""

    http_status: int = 500
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None, definite: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        self.definite = definite

    def to_dict(self) -> dict:
        body = {"error": type(self).__name__, "message": self.message, "definite": self.definite}
        if self.hint:
            body["hint"] = self.hint
        return body

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


# --- configuration and start-up -------------------------------------------------------------


class ConfigError(SynapseError):
    http_status = 400
    default_hint = "fix the configuration file and start again"


# --- packages: fetch and hash ---------------------------------------------------------------


class PackageError(SynapseError):
    """A package could not be obtained (bad URL, network, size)."""

    http_status = 422


class PackageSourceRefused(PackageError):
    default_hint = "use an https://, http:// or ipfs://CID URL"


class PackageFetchError(PackageError):
    default_hint = "check that the package URL is reachable from this node, then retry"


class PackageHostRefused(PackageFetchError):
    """This node's policy forbids the package's host (a private address): local to this node, so an
    upgrade it blocks is retried, never recorded as the network's verdict."""

    default_hint = ("if your package mirror is on a private network, set allow_private_addresses = true under "
                    "[packages] in the node config")


class PackageSizeError(PackageError):
    default_hint = "check package_size against the real file, or raise the node's package size limit"


class HashFormatError(PackageError):
    http_status = 400
    default_hint = "give package_hash as 'sha256:' followed by 64 hex digits, or as 64 bare hex digits"


class HashMismatchError(PackageError):
    default_hint = "do not proceed: the package at this URL is not the one that was proposed"


# --- sandbox ---------------------------------------------------------------------------------


class SandboxError(SynapseError):
    """The package ran (or tried to) and failed. Deterministic failures are the same on every node."""

    http_status = 422


class ModuleRefused(SandboxError):
    default_hint = "an upgrade package may import only the wasm-bindgen placeholders; rebuild it without WASI or host imports"


class FuelExhausted(SandboxError):
    default_hint = "the package ran out of fuel (instructions); make the migration cheaper or raise the fuel limit"


class MemoryExhausted(SandboxError):
    default_hint = "the package needed more linear memory than allowed; raise the memory limit or use less"


class WasmTrap(SandboxError):
    default_hint = "the package crashed (a Rust panic traps as 'unreachable'); test it with 'synapse package test'"


class BadOutput(SandboxError):
    default_hint = "upgrade() must return the new network state as a UTF-8 JSON object"


class Interrupted(SandboxError):
    """Wall-clock interruption: a local failure, never a result other nodes must reproduce."""

    default_hint = "the node stopped the package after its wall-clock deadline; retry on a less loaded node"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, definite=False)


# --- upgrades: invariants, versions, rollback ------------------------------------------------


class UpgradeRefused(SynapseError):
    """The package ran but its result breaks an invariant, or the upgrade is not allowed."""

    http_status = 422


class VersionError(UpgradeRefused):
    http_status = 409
    default_hint = "propose a version greater than the current one (semver), or roll back instead"


class RollbackError(SynapseError):
    http_status = 409


# --- store -----------------------------------------------------------------------------------


class StoreError(SynapseError):
    http_status = 500
    default_hint = "check the node's data directory (disk full, permissions)"


class IntegrityError(StoreError):
    default_hint = "a file in the data directory does not match its digest; restore it from a backup or a peer"


# --- log and protocol ------------------------------------------------------------------------


class EntryRefused(SynapseError):
    """An entry refused at the door. `reason` is a short code counted in metrics."""

    http_status = 400

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class CertificateError(EntryRefused):
    def __init__(self, message: str) -> None:
        super().__init__("bad_certificate", message, hint="an EXECUTE_UPGRADE needs signatures of a majority of validators")


# --- API -------------------------------------------------------------------------------------


class BadRequest(SynapseError):
    http_status = 400


class Unauthorized(SynapseError):
    http_status = 401
    default_hint = "send 'Authorization: Bearer <token>' with the token from the node's data dir (api_token, mode 0600)"


class NotFound(SynapseError):
    http_status = 404


class Conflict(SynapseError):
    http_status = 409


class Unavailable(SynapseError):
    """Indefinite by default (a timeout may hide a success); definite=True for a refusal made before
    anything was done (a full queue)."""
    http_status = 503

    def __init__(self, message: str, *, hint: str | None = None, definite: bool = False) -> None:
        super().__init__(message, hint=hint, definite=definite)


# --- state machines (governance, ratification) -----------------------------------------------


class InvalidTransition(Conflict):
    """A state machine was asked for a transition its table does not have: a proposal cannot go from
    'rejected' to 'ratified'. Raised by the tables in node/core/governance.py and ratification.py."""

    default_hint = "check the proposal's current status (GET /proposals/<id>) before this operation"


# --- local clusters (cluster/local.py) -------------------------------------------------------


class ClusterError(SynapseError):
    """A local cluster could not be started or driven (a node failed to come up, a wait timed out)."""

    http_status = 500
    default_hint = "read the node logs named in the message (cluster.logs(i), or node.log in its data dir)"


# --- testbed: fault injection and scenarios (cluster/faults.py, cluster/scenario*.py) ---------


class FaultInjectionUnavailable(SynapseError):
    """This machine cannot inject the fault asked for (not root, no iptables, ...). Nothing was changed."""

    default_hint = "run 'synapse doctor' to see what this machine lacks and how to fix it"


class ScenarioFormatError(SynapseError):
    """A scenario file is not valid; the message starts with the TOML path of the mistake."""

    http_status = 400
    default_hint = "fix the scenario file at the place named in the message"
