"""Every Python process the testbed starts runs this repository's code, whatever directory the launcher
runs in (cluster/template.py python_child_environment): `python -m` and `python -c` put the working
directory first on sys.path, ahead of PYTHONPATH, so a `node/` folder there used to win."""

from __future__ import annotations

import os
import subprocess
import sys

from cluster.template import REPOSITORY_ROOT, python_child_environment
from tests.integration.test_template import decoy_packages


def run_from(directory, environment, *arguments):
    return subprocess.run([sys.executable, *arguments], cwd=directory, env=environment, capture_output=True,
                          text=True, timeout=60)


def test_a_child_started_in_a_directory_with_decoy_packages_imports_ours(tmp_path):
    decoys = decoy_packages(tmp_path / "elsewhere")
    shown = run_from(decoys, python_child_environment(os.environ), "-c", "import node, cluster; print(node.__file__, cluster.__file__)")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [str(REPOSITORY_ROOT / "node" / "__init__.py"), str(REPOSITORY_ROOT / "cluster" / "__init__.py")]
    usage = run_from(decoys, python_child_environment(os.environ), "-m", "node", "--help")
    assert usage.returncode == 0 and "Run one Synapse-NG node" in usage.stdout


def test_with_pythonpath_alone_the_decoy_wins_which_is_what_the_environment_prevents(tmp_path):
    decoys = decoy_packages(tmp_path / "elsewhere")
    plain = {key: value for key, value in os.environ.items() if key != "PYTHONSAFEPATH"}
    plain["PYTHONPATH"] = str(REPOSITORY_ROOT)
    refused = run_from(decoys, plain, "-m", "node", "--help")
    assert refused.returncode != 0 and "the decoy node package was imported" in refused.stderr
