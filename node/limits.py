"""Fixed limits of one node: every bound that is not a setting, in one place, with units last.

Why one module: a limit typed in the module that enforces it is found only by someone who already
knows where to look, and two modules can disagree (packages.py and config.py each said 16 IPFS
gateways). Here every fixed bound of the node's runtime is listed by subsystem, so a reader sees at
once what the node will hold, wait for and refuse. Durations are integer milliseconds (`_ms`), sizes
bytes (`_bytes`), counts end in `_max`; a caller that needs seconds divides at the call.

What is NOT here: limits an operator sets (node/config.py `Limits`, validated there, and the network
limits of genesis), limits that are part of the wire or the signed bytes (node/core/: digest sizes,
key sizes, entry encoding), and the testbed's own bounds (cluster/). Nothing here is read at import
time from the environment: these are constants (STYLE.md rule 7).
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# --- node process ----------------------------------------------------------------------------------
NODE_STARTUP_TIMEOUT_MS = 120_000          # the awaits of start-up (re-verifying the stored log runs before them)
API_SOCKET_BACKLOG_CONNECTIONS_MAX = 512   # listen() backlog of the HTTP API socket
RAFT_SECRET_SIZE_MAX_BYTES = 1 * KiB
FAULT_POINT_FILE_SIZE_MAX_BYTES = 256      # the testbed's fault-point file (node/fault_points.py)
CLOCK_SKEW_FILE_SIZE_MAX_BYTES = 64        # the testbed's clock-skew file (node/clock.py)
CLOCK_SKEW_FAULT_MAX_MS = 86_400_000       # a testbed skew moves the clock by at most a day either way
CLOCK_SKEW_REFRESH_MS = 100                # a running node re-reads its skew file at most this often

# --- config and genesis files (node/config.py) -----------------------------------------------------
CONFIG_FILE_SIZE_MAX_BYTES = 1 * MiB
GENESIS_FILE_SIZE_MAX_BYTES = 4 * MiB
GENESIS_MEMBERS_MAX = 1024
GENESIS_REPUTATION_MAX = 10**9             # one member's voting weight
CONFIG_URL_LENGTH_MAX = 2048               # an IPFS gateway's URL
CONFIG_HOST_LENGTH_MAX = 253               # a DNS name's maximum

# --- node log (node.log) ---------------------------------------------------------------------------
NODE_LOG_FILE_SIZE_MAX_BYTES = 50 * MiB    # then it rotates
NODE_LOG_FILE_BACKUPS_MAX = 3
NODE_LOG_FIELD_TEXT_LENGTH_MAX = 4000      # characters of one text field of a log record

# --- metrics ---------------------------------------------------------------------------------------
METRICS_NAMES_MAX = 500
METRICS_SERIES_PER_METRIC_MAX = 1_000      # label values may come from the network: bounded per metric
METRICS_LABEL_VALUE_LENGTH_MAX = 200
METRICS_TIMINGS_PENDING_MAX = 1_000        # started timings remembered (e.g. certificate seen, execution pending)

# --- the entry log file (log/entries.bin) ----------------------------------------------------------
LOGFILE_RECORD_SIZE_MAX_BYTES = 1 * MiB    # entries are far smaller (64 KiB by default); a larger length is corruption
LOGFILE_APPEND_BATCH_RECORDS_MAX = 100_000

# --- gossip transport ------------------------------------------------------------------------------
GOSSIP_VISIBILITY_QUERY_IDS_MAX = 100      # ids travel in the query string (aiohttp reads lines of at most 8 KiB)
GOSSIP_VISIBILITY_MEMORY_ENTRIES_MAX = 20_000  # entries whose visibility time is kept (benchmarks, debugging)
GOSSIP_STOP_TIMEOUT_MS = 5_000             # background work and the last log writes, at stop
GOSSIP_WRITE_GATE_POLL_MS = 20             # how often a first local write re-checks whether it may go ahead

# --- governance ------------------------------------------------------------------------------------
GOVERNANCE_LOGGED_DIVERGENCES_MAX = 10_000  # state divergences remembered (each is logged once)
GOVERNANCE_VOTES_TOUCHED_MAX = 1_024        # proposals with new votes waiting for the executor's look (warm-up)
GOVERNANCE_REPORTED_PROPOSALS_MAX = 1_024   # proposals whose reports' state hashes the fold remembers (divergence)
UPGRADE_WARMED_PROPOSALS_MAX = 1_024        # proposals the executor remembers having warmed up (looked at once each)
LOCAL_PUBLISH_ATTEMPTS_MAX = 8             # rebuilds of a local entry whose sequence another local entry took

# --- packages --------------------------------------------------------------------------------------
PACKAGE_IPFS_GATEWAYS_MAX = 16
PACKAGE_CACHE_FILE_SIZE_MAX_BYTES = 1 * GiB  # reading more from a cache file means it is not a package
PACKAGE_SESSION_CLOSE_TIMEOUT_MS = 5_000
PACKAGE_SHARED_LOCK_WAIT_MS = 30_000  # a node waits this long for another's download of a package, then downloads itself
PACKAGE_SHARED_LOCK_POLL_MS = 20

# --- upgrades --------------------------------------------------------------------------------------
UPGRADE_FETCH_TIMEOUT_MS = 600_000
UPGRADE_STORE_TIMEOUT_MS = 120_000
UPGRADE_COMPUTE_TIMEOUT_MS = 120_000
# Approved packages fetched and compiled ahead of their certificate, kept in memory (each <= the module size limit).
UPGRADE_WARM_PACKAGES_MAX = 2
# Work this small runs on the event loop (~1-2 ms at most), larger in a thread: on a busy machine a trip to a
# thread and back waits for a CPU longer than the work takes. Hashing a package; checking a state (old + new).
UPGRADE_INLINE_HASH_BYTES_MAX = 1024 * 1024
UPGRADE_INLINE_STATE_BYTES_MAX = 64 * 1024

# --- version store (upgrades/) ---------------------------------------------------------------------
STORE_HISTORY_RECORDS_MAX = 500
STORE_CHAIN_LENGTH_MAX = 32                # versions kept for rollback
STORE_STATE_SIZE_MAX_BYTES = 256 * MiB
STORE_MANIFEST_SIZE_MAX_BYTES = 4 * MiB

# --- sandbox ---------------------------------------------------------------------------------------
# Deterministic verdicts depend on the first three being the same on every node.
SANDBOX_WASM_STACK_MAX_BYTES = 1 * MiB
SANDBOX_TABLE_ELEMENTS_MAX = 1_000_000
SANDBOX_MEMORY_NEAR_LIMIT_MIN_BYTES = 1 * MiB  # a trap this close to the memory limit counts as running out of it
SANDBOX_EPOCH_TICK_MS = 10                 # the wall-clock guard's resolution (this node only)
SANDBOX_COMPILE_ALLOWANCE_MS = 120_000     # added to the wall timeout of an async call: compiling is not metered
SANDBOX_RUNS_CONCURRENT_MAX = 2
SANDBOX_MEMORY_CACHE_ENTRIES_MAX = 16      # compiled modules kept in memory
SANDBOX_DISK_CACHE_ENTRIES_MAX = 64        # compiled modules kept on disk
SANDBOX_SHARED_CACHE_LOCK_WAIT_MS = 60_000  # a node waits this long for another's compile, then compiles itself
SANDBOX_SHARED_CACHE_LOCK_POLL_MS = 20
# A waiter's poll grows by half up to this: N-1 nodes polling every 20 ms cost a 200-node machine ~10,000
# wake-ups a second for as long as one node compiles or downloads.
SHARED_LOCK_POLL_MAX_MS = 200
SANDBOX_REFUSALS_SHOWN_MAX = 3             # in an error message; inspect() lists them all

# --- the node template (node/forkserver.py) ------------------------------------------------------
FORKSERVER_REQUEST_SIZE_MAX_BYTES = 1 * MiB  # one spawn request: paths and the launcher's environment

# --- raft transport --------------------------------------------------------------------------------
RAFT_REFUSAL_LOG_INTERVAL_MS = 5_000       # per reason and claimed validator: a flood cannot fill the log
