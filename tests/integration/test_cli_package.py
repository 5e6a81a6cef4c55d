"""`synapse package inspect|test`, as a proposer uses them: the README's demo command run as a real process,
the rest through click's CliRunner (same code, in-process, fast). Exit status: 0 ok, 1 package failed,
2 bad usage or unreadable input; errors are `error: ...` + `hint: ...` on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import main
from cluster.cli_package import format_changes, state_changes
from tests.wasm_build import EXAMPLES, REPOSITORY, TEST_PACKAGES, wat_to_wasm

STATE_FILE = EXAMPLES / "state.json"
FEATURE_FLAG_WAT = EXAMPLES / "wat" / "feature_flag.wat"
SYNAPSE = Path(sys.executable).with_name("synapse")
README_DIFF = """~ global.version: "1.1.0" -> "1.2.0"
+ global.nodes.3f9a1c2e7b4d5a60.new_feature_enabled: true
+ global.nodes.8c0e4b7a19d2f335.new_feature_enabled: true
+ global.nodes.d41e6a0b2c9f7e18.new_feature_enabled: true
4 change(s): 3 added, 0 removed, 1 changed
"""


def run(*arguments: str):
    return CliRunner().invoke(main, ["package", *arguments], catch_exceptions=False)


def test_the_readme_demo_command_prints_the_diff_and_exits_0():
    completed = subprocess.run(
        [str(SYNAPSE), "package", "test", "examples/wat/feature_flag.wat", "--state", "examples/state.json",
         "--version", "1.2.0", "--diff"], cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == README_DIFF
    assert completed.stderr.startswith("ok: upgrade() used ") and "new state sha256:" in completed.stderr


def test_test_prints_the_new_state_as_json_and_leaves_the_state_file_alone(tmp_path):
    state_file = tmp_path / "state.json"
    state_file.write_bytes(STATE_FILE.read_bytes())
    before = state_file.read_bytes()
    result = run("test", str(FEATURE_FLAG_WAT), "--state", str(state_file))
    assert result.exit_code == 0, result.stderr
    new_state = json.loads(result.stdout)
    assert new_state["global"]["version"] == "1.2.0"
    assert [node["new_feature_enabled"] for node in new_state["global"]["nodes"].values()] == [True, True, True]
    assert state_file.read_bytes() == before


def test_a_binary_wasm_file_works_like_its_wat_source(tmp_path):
    binary = tmp_path / "feature_flag.wasm"
    binary.write_bytes(wat_to_wasm(FEATURE_FLAG_WAT))
    from_binary = run("test", str(binary), "--state", str(STATE_FILE))
    from_text = run("test", str(FEATURE_FLAG_WAT), "--state", str(STATE_FILE))
    assert from_binary.exit_code == 0 and from_binary.stdout == from_text.stdout


@pytest.mark.parametrize("package, options, message", [
    ("identity.wat", ["--version", "1.2.0"],
     "error: upgrade() set global.version to '1.1.0', but the upgrade is to '1.2.0'\nhint: set state['global']['version'] to the proposal's version\n"),
    ("delete_members.wat", ["--version", "1.2.0"],
     "error: upgrade() removed 3 member(s) of global.nodes: 3f9a1c2e7b4d5a60, 8c0e4b7a19d2f335, d41e6a0b2c9f7e18\n"
     "hint: a migration must keep every member; removing members is a governance decision\n"),
    ("wasi_import.wat", [],
     "error: package refused: it imports wasi_snapshot_preview1.fd_write (func(i32, i32, i32, i32) -> i32), which the sandbox does not provide\n"
     "hint: an upgrade package may import only the wasm-bindgen placeholders; rebuild it without WASI or host imports\n"),
    ("endless_loop.wat", ["--fuel", "1000000"],
     "error: upgrade() ran out of fuel: it used all 1,000,000 units allowed\n"
     "hint: the package ran out of fuel (instructions); make the migration cheaper or raise the fuel limit\n"),
    ("memory_bomb.wat", ["--memory-mb", "4"], None),
    ("panic.wat", [], "error: upgrade() trapped: wasm `unreachable` instruction executed\n"
                      "hint: the package crashed (a Rust panic traps as 'unreachable'); test it with 'synapse package test'\n"),
    ("not_an_object.wat", [], "error: upgrade() returned a JSON array, not an object\n"
                              "hint: upgrade() must return the new network state as a UTF-8 JSON object\n"),
])
def test_a_failing_package_prints_error_and_hint_and_exits_1(package, options, message):
    result = run("test", str(TEST_PACKAGES / package), "--state", str(STATE_FILE), *options)
    assert result.exit_code == 1
    assert result.stdout == ""
    if message is None:
        assert result.stderr.startswith("error: upgrade() ran out of linear memory: ") and "limit 4.0 MiB" in result.stderr
    else:
        assert result.stderr == message


def test_the_wall_clock_limit_is_an_option():
    result = run("test", str(TEST_PACKAGES / "endless_loop.wat"), "--state", str(STATE_FILE), "--fuel", str(10**15), "--timeout-ms", "200")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "error: upgrade() ran past the wall-clock deadline of 200 ms"


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize("make_arguments, first_line", [
    (lambda tmp: ["test", str(FEATURE_FLAG_WAT), "--state", str(tmp / "missing.json")], "error: cannot read state file "),
    (lambda tmp: ["test", str(FEATURE_FLAG_WAT), "--state", str(_write(tmp, "list.json", "[1, 2]"))],
     "error: state file "),
    (lambda tmp: ["test", str(FEATURE_FLAG_WAT), "--state", str(_write(tmp, "nan.json", '{"a": NaN}'))],
     "error: state file "),
    (lambda tmp: ["test", str(FEATURE_FLAG_WAT), "--state", str(_write(tmp, "deep.json", "[" * 5000 + "]" * 5000))],
     "error: state file "),
    (lambda tmp: ["test", str(_write(tmp, "broken.wat", "(module (func")), "--state", str(STATE_FILE)],
     "error: "),
    (lambda tmp: ["test", str(FEATURE_FLAG_WAT), "--state", str(STATE_FILE), "--fuel", "0"],
     "error: sandbox limit fuel must be an integer from 1 to "),
    (lambda tmp: ["inspect", str(tmp / "missing.wasm")], "error: cannot read package file "),
])
def test_bad_input_files_and_options_exit_2_with_an_error(tmp_path, make_arguments, first_line):
    result = run(*make_arguments(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.startswith(first_line), result.stderr
    assert result.stderr.splitlines()[1].startswith("hint: ")


def test_invalid_wat_says_where():
    result = CliRunner().invoke(main, ["package", "test", str(TEST_PACKAGES / "README.md"), "--state", str(STATE_FILE)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].endswith("is neither a WebAssembly binary nor valid WAT text: expected `(` at line 1, column 1")


def test_a_version_that_is_not_greater_warns_but_the_dry_run_succeeds(tmp_path):
    state = json.loads(STATE_FILE.read_text())
    state["global"]["version"] = "1.2.0"
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    result = run("test", str(FEATURE_FLAG_WAT), "--state", str(state_file), "--version", "1.2.0")
    assert result.exit_code == 0
    assert "warning: version 1.2.0 is not greater than the current version 1.2.0; a node would refuse this upgrade on this state" in result.stderr


def test_inspect_prints_the_module_description_as_json():
    result = run("inspect", str(FEATURE_FLAG_WAT))
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["format"] == "wat" and report["abi"] == 2 and report["abi_name"] == "plain"
    assert report["runnable"] is True and report["refusals"] == []
    assert report["upgrade_info"] == {"version": "1.2.0", "description": "Add new_feature_enabled flag", "breaking": False}
    assert [entry["name"] for entry in report["exports"]] == ["memory", "alloc", "upgrade", "get_upgrade_info"]
    assert len(report["sha256"]) == 64


def test_inspect_of_a_refused_module_exits_0_and_says_why():
    result = run("inspect", str(TEST_PACKAGES / "wasi_import.wat"))
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["runnable"] is False
    assert report["imports"] == [{"module": "wasi_snapshot_preview1", "name": "fd_write", "type": "func(i32, i32, i32, i32) -> i32"}]
    assert report["refusals"] == ["imports wasi_snapshot_preview1.fd_write (func(i32, i32, i32, i32) -> i32), which the sandbox does not provide"]


# --- the diff ----------------------------------------------------------------------------------------------


def test_the_diff_names_added_removed_and_changed_paths_and_types():
    old = {"global": {"version": "1.1.0", "nodes": {"a": {"x": 1}, "b.c": {}}}, "list": [1, 2, 3], "flag": 1}
    new = {"global": {"version": "1.2.0", "nodes": {"a": {"x": 1.0, "y": [True]}}}, "list": [1, 5], "flag": True}
    lines = format_changes(state_changes(old, new), lines_max=100)
    assert lines == [
        '~ global.version: "1.1.0" -> "1.2.0"',
        "~ global.nodes.a.x: 1 -> 1.0",
        "+ global.nodes.a.y: [true]",
        '- global.nodes["b.c"]: {}',
        "~ list[1]: 2 -> 5",
        "- list[2]: 3",
        "~ flag: 1 -> true",
        "7 change(s): 1 added, 2 removed, 4 changed",
    ]


def test_the_diff_is_capped_and_says_how_many_more():
    old = {"nodes": {f"n{index}": {} for index in range(10)}}
    new = {"nodes": {f"n{index}": {"on": True} for index in range(10)}}
    lines = format_changes(state_changes(old, new), lines_max=3)
    assert lines[3] == "... and 7 more changes not shown (raise --diff-lines-max)"
    assert lines[4] == "10 change(s): 10 added, 0 removed, 0 changed"
    assert state_changes(old, old) == []


# --- --json --------------------------------------------------------------------------------------------


def test_test_json_is_one_document_with_the_run_and_the_new_state_or_changes(tmp_path):
    result = run("test", str(FEATURE_FLAG_WAT), "--state", str(STATE_FILE), "--version", "1.2.0", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["warnings"] == [] and document["fuel_consumed"] > 0
    assert document["state_hash"].startswith("sha256:") and document["state"]["global"]["version"] == "1.2.0"
    assert result.stderr.startswith("ok: upgrade() used ")
    diff = json.loads(run("test", str(FEATURE_FLAG_WAT), "--state", str(STATE_FILE), "--diff", "--diff-lines-max", "2", "--json").stdout)
    assert diff["changes_total"] == 4 and "state" not in diff
    assert diff["changes"][0] == {"kind": "~", "path": "global.version", "old": "1.1.0", "new": "1.2.0"} and len(diff["changes"]) == 2


def test_test_json_reports_a_failure_and_a_warning_in_the_document(tmp_path):
    failed = run("test", str(TEST_PACKAGES / "panic.wat"), "--state", str(STATE_FILE), "--json")
    assert failed.exit_code == 1
    document = json.loads(failed.stdout)
    assert document["ok"] is False and document["error"].startswith("upgrade() trapped") and "synapse package test" in document["hint"]
    assert failed.stderr.startswith("error: upgrade() trapped")
    state = json.loads(STATE_FILE.read_text())
    state["global"]["version"] = "1.2.0"
    (tmp_path / "state.json").write_text(json.dumps(state))
    warned = json.loads(run("test", str(FEATURE_FLAG_WAT), "--state", str(tmp_path / "state.json"), "--version", "1.2.0", "--json").stdout)
    assert warned["ok"] is True and "not greater than the current version" in warned["warnings"][0]


def test_inspect_json_is_the_report_and_a_bad_file_is_a_json_error(tmp_path):
    report = json.loads(run("inspect", str(FEATURE_FLAG_WAT), "--json").stdout)
    assert report["runnable"] is True and report["format"] == "wat"
    missing = run("inspect", str(tmp_path / "nope.wasm"), "--json")
    assert missing.exit_code == 2
    error = json.loads(missing.stdout)
    assert error["ok"] is False and "cannot read package file" in error["error"] and error["hint"] == "check the path"
