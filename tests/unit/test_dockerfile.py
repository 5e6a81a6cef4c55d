"""The node image's Dockerfile, checked statically (no container engine runs on CI): its stages, the non-root
user the manifests expect, every file it copies exists and passes .dockerignore, and its command is the
manifests' command and a real CLI command. The checker is shown to fail on broken Dockerfiles."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli import main
from cluster.k8s.manifests import NODE_USER_ID, PodOptions, network_objects
from cluster.k8s.network import CONFIG_PATH, build_network

REPOSITORY = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPOSITORY / "Dockerfile").read_text()
DOCKERIGNORE = (REPOSITORY / ".dockerignore").read_text()
NODE_COMMAND = ["synapse", "node", "run", "--config", CONFIG_PATH]


def instructions(text):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined.splitlines() if line.strip()]


def _pattern(text):
    expression = re.escape(text.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.compile(expression)


def ignored(path, ignore_text):
    """Docker's rule: the last pattern matching the path (or a directory above it) decides; '!' re-includes."""
    verdict, parts = False, path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    for line in ignore_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), _pattern(line.lstrip("!"))
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def dockerfile_problems(text, ignore_text):
    steps, problems = instructions(text), []
    stages = [arguments for instruction, arguments in steps if instruction == "FROM"]
    if len(stages) != 2 or not all(re.match(r"python:3\.1[1-9]-slim\b", stage) for stage in stages) or " AS builder" not in stages[0]:
        problems.append(f"expected a python:3.x-slim builder stage and a python:3.x-slim final stage, got {stages}")
    final = steps[max(index for index, (instruction, _) in enumerate(steps) if instruction == "FROM"):]
    for instruction, arguments in steps:
        if instruction == "COPY" and not arguments.startswith("--from="):
            for source in arguments.split()[:-1]:
                if not (REPOSITORY / source).exists():
                    problems.append(f"COPY {source}: no such file in the repository")
                elif ignored(source, ignore_text):
                    problems.append(f"COPY {source}: excluded by .dockerignore")
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    if users != [f"{NODE_USER_ID}:{NODE_USER_ID}"]:
        problems.append(f"the final stage must run as {NODE_USER_ID}:{NODE_USER_ID} (the manifests' runAsUser), got {users}")
    runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    if "pip install" not in runs or "--no-index" not in runs or "synapse-ng" not in runs:
        problems.append("the final stage must install the synapse-ng wheel from the builder's wheels only (--no-index)")
    commands = {instruction: json.loads(arguments) for instruction, arguments in final if instruction in ("ENTRYPOINT", "CMD")}
    if commands.get("ENTRYPOINT", []) + commands.get("CMD", []) != NODE_COMMAND:
        problems.append(f"ENTRYPOINT + CMD must be {NODE_COMMAND}, got {commands}")
    return problems


def test_the_dockerfile_has_no_problem():
    assert dockerfile_problems(DOCKERFILE, DOCKERIGNORE) == []


def test_it_copies_what_the_wheel_build_needs():
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    copied = {source for instruction, arguments in instructions(DOCKERFILE) if instruction == "COPY" and not arguments.startswith("--from")
              for source in arguments.split()[:-1]}
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", project["project"]["readme"]} | packages <= copied


@pytest.mark.parametrize("path, expected", [("node/runtime.py", False), ("cluster/k8s/pod_init.py", False), ("pyproject.toml", False),
                                            (".git/config", True), (".venv/bin/python", True), ("tests/conftest.py", True),
                                            ("node/__pycache__/api.cpython-311.pyc", True), ("runs/x/history.json", True)])
def test_the_build_context_holds_only_the_sources(path, expected):
    assert ignored(path, DOCKERIGNORE) is expected


@pytest.mark.parametrize("broken, problem", [
    (lambda text: text.replace("USER 10001:10001", "USER root"), "must run as 10001:10001"),
    (lambda text: text.replace("COPY node ./node", "COPY nodes ./node"), "COPY nodes: no such file"),
    (lambda text: text.replace('"--config", "/etc/synapse-ng/config.toml"', '"--config", "/etc/config.toml"'), "ENTRYPOINT + CMD"),
    (lambda text: text.replace("FROM python:3.11-slim AS builder", "FROM python:3.11 AS builder"), "builder stage"),
    (lambda text: text.replace(" --no-index", ""), "--no-index"),
])
def test_the_checker_finds_a_broken_dockerfile(broken, problem):
    changed = broken(DOCKERFILE)
    assert changed != DOCKERFILE
    assert any(problem in found for found in dockerfile_problems(changed, DOCKERIGNORE))


def test_an_ignore_file_that_drops_the_sources_is_found():
    assert any("excluded by .dockerignore" in found for found in dockerfile_problems(DOCKERFILE, DOCKERIGNORE + "cluster/\n"))


def test_the_image_command_is_the_manifests_command_and_exists():
    statefulset = next(document for document in network_objects(build_network(nodes=1, validators=1), PodOptions())
                       if document["kind"] == "StatefulSet")
    spec = statefulset["spec"]["template"]["spec"]
    assert spec["containers"][0]["command"] == NODE_COMMAND
    assert spec["securityContext"]["runAsUser"] == NODE_USER_ID
    assert CliRunner().invoke(main, ["node", "run", "--help"]).exit_code == 0
    init = spec["initContainers"][0]["command"]
    assert init[:3] == ["python", "-m", "cluster.k8s.pod_init"]
    assert (REPOSITORY / "cluster" / "k8s" / "pod_init.py").is_file()
