"""Run a scenario: start its cluster and package server, play its steps, judge, and write the report.

Why it works as it does:
- One thread drives everything, synchronously, in file order: a scenario is a story and its history
  must read like one. Node processes die with this thread (LocalCluster's parent-death signal), and an
  ExitStack tears down in reverse order whatever happened: paused nodes resumed, network faults
  healed, nodes stopped, the provider's network removed (iptables chain, namespaces), the package
  server closed, the address block released.
- The cluster runs on the scenario's provider (`[cluster] provider`, cluster/providers/): set up
  first, so the package server binds an address every node reaches (127.0.0.1 on loopback, the
  bridge on netns), then the nodes. Steps reach faults only through the provider interface.
- The run stops playing steps at the first failed or broken step (later steps would only fail in
  cascade), but it still heals the network, resumes paused nodes and runs the shared safety checks
  (cluster/safety.py), so a failing run says as much as it can about the state it left.
- Safety checks poll until the scenario's `settle` deadline for convergence (gossip needs a few
  rounds after a heal); history checks (certificates, double execution) are judged on the last look.
- Randomness comes only from one `random.Random(seed)`: the seed is printed first and written to the
  report, and `--seed` replays the same choices (random picks of nodes).
- The verdict is PASS only if every step and every safety check passed; a check that could not be
  judged (skipped) is shown as such and never counts as a pass.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.faults import NoLeaderYet
from cluster.package_server import PackageServer, build_package
from cluster.report import RunRecord, StepRecord, copy_node_files, log_excerpt, outcome_record, report_folder, write_report
from cluster.providers import make_provider
from cluster.safety import logs_converged, one_version_and_state_hash
from cluster.scenario import LINK_FAULT_STEPS, Scenario, Step
from cluster.scenario_steps import ACTIONS, CHECKS, Driver, Judgement, StepFailed, run_hook
from node.config import NETWORK_LIMITS
from node.errors import FaultInjectionUnavailable, SynapseError
from node.fault_points import ENVIRONMENT_VARIABLE as FAULT_POINTS_VARIABLE
from node.logging_setup import LOG_FILE_NAME

POLL_INTERVAL_S = 0.2
SEED_MAX = 2**31 - 1
REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
PARTITION_ACTIONS = ("partition", "isolate", "cut")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    report_root: Path
    seed: int | None = None
    keep_data: bool = False
    echo: Callable[[str], None] = print


class _Timeout(Exception):
    pass


class ScenarioRun:
    """One run of one scenario. `run()` returns the RunRecord; the report folder is `self.folder`."""

    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario
        self.options = options
        self.seed = options.seed if options.seed is not None else scenario.seed if scenario.seed is not None else \
            random.SystemRandom().randrange(SEED_MAX)
        self.rng = random.Random(self.seed)
        self.record = RunRecord(scenario=scenario.name, scenario_path=str(scenario.path) if scenario.path else None,
                                seed=self.seed, started_at=time.time())
        self.folder = report_folder(options.report_root, scenario.name, self.record.started_at)
        self._deadline = time.monotonic() + scenario.timeout_ms / 1000
        self._driver: Driver | None = None
        self._log_paths: dict[str, Path] = {}

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> RunRecord:
        echo = self.options.echo
        echo(f"scenario: {self.scenario.name}")
        echo(f"seed: {self.seed} (replay with --seed {self.seed})")
        data_dir = Path(tempfile.mkdtemp(prefix="synapse-scenario-"))
        try:
            self._preflight()
            with contextlib.ExitStack() as stack:
                self._start(stack, data_dir)
                self._play()
                self._finish()
        except KeyboardInterrupt:
            self.record.aborted = "interrupted (Ctrl-C)"
        except SynapseError as error:
            self.record.aborted = error.one_line()
            echo(f"run aborted: {error.one_line()}")
        finally:
            self.record.finished_at = time.time()
            self._collect_logs()
            write_report(self.folder, self.record, self._scenario_text())
            if not self.options.keep_data:
                shutil.rmtree(data_dir, ignore_errors=True)
            else:
                echo(f"cluster data kept in {data_dir}")
        echo(f"verdict: {self.record.verdict}   report: {self.folder}")
        return self.record

    def _preflight(self) -> None:
        """Refuse before starting anything when a step needs what this machine cannot do."""
        provider = make_provider(self.scenario.cluster.provider)
        needed = sorted({step.do if step.do in LINK_FAULT_STEPS else "partition" for step in self.scenario.steps
                         if step.do in PARTITION_ACTIONS + LINK_FAULT_STEPS})
        capabilities = provider.capabilities()
        for kind in needed:
            capability = capabilities[kind]
            if capability.available:
                continue
            if kind == "partition":
                raise FaultInjectionUnavailable(f"this scenario cuts the network, but network partitions are not possible on this "
                                                f"machine: {capability.detail}", hint=capability.hint or None)
            raise FaultInjectionUnavailable(f"this scenario needs {kind}, which the {provider.name} provider cannot do on this "
                                            f"machine: {capability.detail}", hint=capability.hint or None)

    def _start(self, stack: contextlib.ExitStack, data_dir: Path) -> None:
        echo = self.options.echo
        shape = self.scenario.cluster
        provider = make_provider(
            shape.provider, nodes=shape.nodes, validators=shape.validators, data_dir=data_dir / "cluster", start_timeout_s=START_TIMEOUT_S,
            governance=dict(shape.governance) or None, reputations=list(shape.reputations) if shape.reputations else None,
            network_limits={key: value for key, value in shape.limits.items() if key in NETWORK_LIMITS} or None,
            config_limits={key: value for key, value in shape.limits.items() if key not in NETWORK_LIMITS} or None,
            private_addresses_allowed=shape.allow_private_addresses,
            extra_env={FAULT_POINTS_VARIABLE: "1"})  # a testbed cluster: `crash_at` steps can arm crash points
        provider.seed = self.seed
        stack.callback(provider.close)  # also when setup or start fails half-way
        provider.setup()
        packages = None
        served = {}
        if self.scenario.packages:
            packages = stack.enter_context(PackageServer(host=provider.host_address))
            for spec in self.scenario.packages:
                data = build_package(spec.source, data_dir / "builds")
                served[spec.name] = packages.add(spec.name, data, corrupt=spec.corrupt)
                echo(f"package {spec.name}: {len(data):,} bytes, sha256 {served[spec.name].sha256[:16]}..., {served[spec.name].http_url}")
        echo(f"starting {shape.nodes} nodes ({shape.validators} validator{'s' if shape.validators != 1 else ''}) "
             f"on the {provider.name} provider ...")
        stack.callback(provider.close)  # nodes stop before the package server closes
        provider.start(ipfs_gateways=(packages.gateway_url,) if packages else ())
        self._driver = Driver(scenario=self.scenario, provider=provider, rng=self.rng, packages=packages, served=served, log=echo)
        stack.callback(self._driver.close)
        for handle in provider.cluster.nodes:
            label = f"node-{handle.index + 1}"
            self.record.nodes[label] = {"node_id": handle.node_id, "api_url": handle.api_url, "validator": handle.is_validator}
            self._log_paths[label] = handle.data_dir
            echo(f"  {label}  {handle.node_id}  {'validator' if handle.is_validator else 'member   '}  {handle.api_url}")

    def _play(self) -> None:
        total = len(self.scenario.steps)
        for step in self.scenario.steps:
            record = self._run_step(step)
            self.record.steps.append(record)
            status = "ok" if record.status == "passed" else record.status.upper()
            self.options.echo(f"[{step.index + 1:>3}/{total}] {step.label} ... {status} ({record.duration_s:.2f} s) {record.seen}")
            if record.status != "passed":
                self.options.echo(f"        expected: {record.expected}")
                for detail in record.details:
                    self.options.echo(f"        {detail}")
                return

    def _run_step(self, step: Step) -> StepRecord:
        record = StepRecord(index=step.index, label=step.label, do=step.do, started_at=time.time())
        began = time.monotonic()
        try:
            self._check_deadline()
            if step.do == "assert" or step.do == "hook":
                judgement = self._judge(step)
                record.status = "passed" if judgement.ok else "failed"
                record.expected, record.seen = judgement.expected, judgement.seen
                record.nodes, record.details = judgement.nodes, judgement.details
            else:
                record.expected, record.seen = f"{step.do} succeeds", ACTIONS[step.do](self._driver, step)
        except StepFailed as failure:
            record.status, record.expected, record.seen = "failed", failure.expected, failure.seen
            record.nodes, record.details = failure.nodes, failure.details
        except _Timeout:
            record.status, record.expected = "error", "the step runs before the scenario's timeout"
            record.seen = f"scenario timeout ({self.scenario.timeout_ms} ms) reached"
        except (SynapseError, OSError) as error:
            record.status, record.expected = "error", f"{step.do} can run"
            record.seen = error.one_line() if isinstance(error, SynapseError) else f"{type(error).__name__}: {error}"
        record.duration_s = time.monotonic() - began
        if record.status != "passed":
            self._attach_excerpts(record)
        return record

    def _judge(self, step: Step) -> Judgement:
        """Poll a check: until it holds (within), throughout (during), or once."""
        check = (lambda: run_hook(self._driver, step)) if step.do == "hook" else (lambda: CHECKS[step.check](self._driver, step))

        def look() -> Judgement:
            try:
                return check()
            except NoLeaderYet as error:     # "leader" while an election runs: not yet, like any check that does not hold
                return Judgement(ok=False, expected="the validators have a Raft leader", seen=error.one_line())
        if step.during_ms:
            end = time.monotonic() + step.during_ms / 1000
            while True:
                judgement = look()
                if not judgement.ok or time.monotonic() >= end:
                    return judgement
                self._sleep(POLL_INTERVAL_S)
        end = time.monotonic() + step.within_ms / 1000
        while True:
            judgement = look()
            if judgement.ok or time.monotonic() >= end:
                return judgement
            self._sleep(POLL_INTERVAL_S)

    def _sleep(self, seconds: float) -> None:
        self._check_deadline()
        time.sleep(min(seconds, max(0.0, self._deadline - time.monotonic())))

    def _check_deadline(self) -> None:
        if time.monotonic() >= self._deadline:
            raise _Timeout()

    # --- the end ----------------------------------------------------------------------------

    def _finish(self) -> None:
        """Heal, resume, then the shared safety checks on every live node (polled until `settle`)."""
        driver = self._driver
        driver.close()
        self.options.echo("safety checks on the live nodes ...")
        began_wall, began = time.time(), time.monotonic()
        settle_end = time.monotonic() + self.scenario.settle_ms / 1000
        while True:
            snapshots, unreadable = driver.snapshots()
            converging = [logs_converged(snapshots), one_version_and_state_hash(snapshots)]
            if (all(outcome.ok for outcome in converging) and not unreadable) or time.monotonic() >= settle_end:
                break
            time.sleep(POLL_INTERVAL_S)
        outcomes = driver.safety_outcomes(snapshots, unreadable)
        for outcome in outcomes:
            record = outcome_record(outcome, started_at=began_wall, duration_s=time.monotonic() - began)
            if record.status != "passed":
                self._attach_excerpts(record)
            self.record.safety.append(record)
            self.options.echo(f"  {'ok' if outcome.ok else 'SKIPPED' if outcome.skipped else 'FAILED'}  {outcome.name}: {outcome.seen}")
            for detail in outcome.details if not outcome.ok else ():
                self.options.echo(f"        {detail}")
        self._collect_finals(driver)

    def _collect_finals(self, driver: Driver) -> None:
        """Each node's final health, state and log (while the cluster still runs)."""
        self._finals = {}
        for index in range(1, driver.node_count + 1):
            final: dict = {"process": driver.processes.state(index)}
            if driver.processes.live(index):
                for name, read in (("health", lambda: driver.api(index).get("/health").data), ("state", lambda: driver.read_state(index)),
                                   ("log", lambda: driver.read_log(index))):
                    try:
                        final[name] = read()
                    except (OSError, SynapseError) as error:
                        final[name] = f"unreadable: {error}"
            self._finals[driver.label(index)] = final

    def _collect_logs(self) -> None:
        finals = getattr(self, "_finals", {})
        for label, node_dir in self._log_paths.items():
            files = {name: node_dir / name for name in (LOG_FILE_NAME, "stderr.log", "stdout.log") if (node_dir / name).exists()}
            copy_node_files(self.folder, label, files, finals.get(label, {"process": "not reached"}))

    def _attach_excerpts(self, record: StepRecord) -> None:
        moment = record.started_at + record.duration_s
        for label in record.nodes:
            if label in self._log_paths:
                record.excerpts[label] = log_excerpt(self._log_paths[label] / LOG_FILE_NAME, around_s=moment)

    def _scenario_text(self) -> str | None:
        try:
            return self.scenario.path.read_text() if self.scenario.path else None
        except OSError:
            return None


def needs_partitions(scenario: Scenario) -> bool:
    return any(step.do in PARTITION_ACTIONS for step in scenario.steps)


def run_scenario(scenario: Scenario, options: RunOptions) -> RunRecord:
    return ScenarioRun(scenario, options).run()
