"""`make deploy` against AWS played by a moto server (STS, SSM, EC2, ECR, CloudFormation).

Docker and the SAM CLI cannot run offline here (no Docker engine, no AWS to deploy to): they are
stood in for by two recording executables, so the tests see exactly which commands a deploy runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from local.template import ROOT
from tests.helpers import moto_server

REGION = "eu-central-1"
ACCOUNT = "123456789012"  # moto's account
RECORDER = """#!/bin/sh
echo "$@" >> {log}
case "$1" in
  info) {info};;
  --version) echo "SAM CLI, version 1.148.0";;
  login) cat > /dev/null; echo "Login Succeeded";;
esac
"""


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str) -> Iterator[dict[str, str]]:
    """A fresh moto account per test, and the environment that points boto3 at it."""
    import requests

    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    env = {"AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": REGION}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _tool(tmp_path: Path, name: str, info: str = 'echo "27.3.1"') -> tuple[Path, Path]:
    log = tmp_path / f"{name}.log"
    log.touch()
    path = tmp_path / name
    path.write_text(RECORDER.format(log=log, info=info))
    path.chmod(0o755)
    return path, log


def _operator_prepared(tmp_path: Path, secrets: bool = True) -> Path:
    """What an operator does before a first deploy: the SSM secrets and samconfig's values."""
    ssm = boto3.client("ssm", region_name=REGION)
    if secrets:
        for name in ("/aiadmin/staging/yclients-partner-token", "/aiadmin/staging/jwt-secret"):
            ssm.put_parameter(Name=name, Type="SecureString", Value="x" * 40)
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    by_zone = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
    config = (ROOT / "samconfig.toml").read_text()
    config = (config.replace("REPLACE_ME_YCLIENTS_APP_ID", "4242").replace("REPLACE_ME_VPC_ID", vpc)
              .replace("REPLACE_ME_SUBNET_ID_A,REPLACE_ME_SUBNET_ID_B", ",".join(sorted(by_zone.values())[:2])))
    path = tmp_path / "samconfig.toml"
    path.write_text(config)
    return path


def _deploy(aws: dict[str, str], *args: str, docker: Path, sam: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "scripts/deploy.py", "--docker", str(docker), "--sam", str(sam), *args],
                          cwd=ROOT, env={**os.environ, **aws}, capture_output=True, text=True, timeout=180)


def test_make_deploy_dry_run_passes_when_the_inputs_are_in_place(aws: dict[str, str], tmp_path: Path) -> None:
    config = _operator_prepared(tmp_path)
    docker, docker_log = _tool(tmp_path, "docker")
    sam, sam_log = _tool(tmp_path, "sam")
    done = subprocess.run(["make", "--no-print-directory", "deploy", "ENV=staging", "DRY_RUN=1", "TAG=abc123",
                           f"SAMCONFIG={config}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **aws, "DOCKER": str(docker), "SAM": str(sam)})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/aiadmin-runner:abc123"
    assert f"ok    account: {ACCOUNT}" in out and f"ok    region: {REGION}" in out
    assert "ok    SSM /aiadmin/staging/yclients-partner-token: SecureString" in out
    assert "ok    SSM /aiadmin/staging/jwt-secret: SecureString" in out
    assert f"ok    image: {image} (to build and push)" in out
    # Every step is printed, in order, with the image it deploys.
    steps = re.findall(r"^  \d+\. (.*)$", out, re.MULTILINE)
    assert [s.split()[0] for s in steps] == ["CloudFormation:", "docker", "build", "push", "build", "deploy"]
    assert f"docker build --platform linux/arm64 -f wa_runner/Dockerfile -t {image} ." in out
    assert re.search(rf"sam deploy --config-env staging --parameter-overrides '.*RunnerImageUri={image}'", out)
    assert "nothing was changed" in out
    # Nothing was changed: no repository or stack, no build, no push, no sam build/deploy.
    assert boto3.client("ecr", region_name=REGION).describe_repositories()["repositories"] == []
    assert boto3.client("cloudformation", region_name=REGION).list_stacks()["StackSummaries"] == []
    assert docker_log.read_text().split() == ["info", "--format", "{{.ServerVersion}}"]
    assert sam_log.read_text().split() == ["--version"]


def test_dry_run_names_every_missing_input_and_exits_1(aws: dict[str, str], tmp_path: Path) -> None:
    docker, _ = _tool(tmp_path, "docker", info='echo "Cannot connect to the Docker daemon" >&2; exit 1')
    sam, _ = _tool(tmp_path, "sam")
    done = _deploy(aws, "--env", "staging", "--dry-run", "--tag", "abc123", docker=docker, sam=sam)
    assert done.returncode == 1
    out = done.stdout
    assert "FAIL  samconfig.toml: [staging] still has placeholders: SubnetIds, VpcId, YClientsAppId" in out
    assert "FAIL  SSM /aiadmin/staging/jwt-secret: missing" in out
    assert "aws ssm put-parameter --region eu-central-1 --type SecureString --name /aiadmin/staging/jwt-secret" in out
    assert "FAIL  docker: no engine reachable (Cannot connect to the Docker daemon)" in out
    assert "not ready: 4 problem(s)" in out


def test_no_credentials_is_one_clear_failure(tmp_path: Path) -> None:
    docker, _ = _tool(tmp_path, "docker")
    sam, _ = _tool(tmp_path, "sam")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([sys.executable, "scripts/deploy.py", "--dry-run", "--tag", "t", "--docker", str(docker),
                           "--sam", str(sam)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "FAIL  AWS credentials: none found" in done.stdout
    assert "Traceback" not in done.stderr


def test_unknown_stage_is_a_usage_error(aws: dict[str, str], tmp_path: Path) -> None:
    docker, _ = _tool(tmp_path, "docker")
    done = _deploy(aws, "--env", "qa", "--dry-run", docker=docker, sam=docker)
    assert done.returncode == 2 and "no [qa.deploy.parameters]; stages: default, prod, staging" in done.stderr


def test_deploy_creates_the_repository_pushes_the_image_and_runs_sam(aws: dict[str, str], tmp_path: Path) -> None:
    config = _operator_prepared(tmp_path)
    docker, docker_log = _tool(tmp_path, "docker")
    sam, sam_log = _tool(tmp_path, "sam")
    done = _deploy(aws, "--env", "staging", "--config", str(config), "--tag", "abc123", docker=docker, sam=sam)
    assert done.returncode == 0, done.stdout + done.stderr
    ecr = boto3.client("ecr", region_name=REGION)
    repo = ecr.describe_repositories(repositoryNames=["aiadmin-runner"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    image = f"{repo['repositoryUri']}:abc123"
    registry = image.split("/")[0]
    docker_calls = docker_log.read_text().splitlines()
    assert docker_calls[1:] == [f"login --username AWS --password-stdin {registry}",
                                f"build --platform linux/arm64 -f wa_runner/Dockerfile -t {image} .",
                                f"push {image}"]
    sam_calls = sam_log.read_text().splitlines()
    assert sam_calls[0] == "--version" and sam_calls[1] == "build"
    deploy = sam_calls[2]
    assert deploy.startswith("deploy --config-env staging --parameter-overrides Stage=staging YClientsAppId=4242")
    assert f"RunnerImageUri={image}" in deploy and "REPLACE_ME" not in deploy

    # Deploying the same commit again reuses the pushed image (as prod does after staging).
    manifest = '{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}'
    ecr.put_image(repositoryName="aiadmin-runner", imageTag="abc123", imageManifest=manifest)
    docker_log.write_text("")
    again = _deploy(aws, "--env", "staging", "--config", str(config), "--tag", "abc123", docker=docker, sam=sam)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"ok    image: {image} (already pushed: not rebuilt)" in again.stdout
    assert docker_log.read_text() == ""
