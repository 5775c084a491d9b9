"""One deploy command: `make deploy ENV=staging [DRY_RUN=1] [TAG=...]`.

Reads the stage's section of samconfig.toml, checks every input a deploy needs, then
  1. deploys the bootstrap stack with the runner's ECR repository (scripts/ecr-repository.yaml;
     one per account and region, shared by the stages),
  2. builds the runner image (linux/arm64) and pushes it, tagged with the git commit, unless
     that tag is already in the repository (tags are immutable: same commit, same image),
  3. `sam build`, then `sam deploy --config-env <stage>` with RunnerImageUri set to that image.

With --dry-run it runs the checks and prints every step it would take, changing nothing.
AWS is reached with boto3's default credentials and region settings of samconfig.toml;
AWS_ENDPOINT_URL (e.g. a moto server) redirects every AWS call, which is how it is tested.

Exit status: 0 ready (or deployed), 1 an input is missing or a step failed (each problem is
printed with what to do), 2 the command line or samconfig.toml is unusable.
"""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "REPLACE_ME"
REPOSITORY_STACK = "aiadmin-runner-repository"
REPOSITORY_NAME = "aiadmin-runner"
REPOSITORY_TEMPLATE = ROOT / "scripts" / "ecr-repository.yaml"
# Template parameters naming SSM SecureString parameters the stack reads at start-up.
SECRET_PARAMETERS = ("PartnerTokenParameter", "JwtSecretParameter")
TEMPLATE_DEFAULTS = {"PartnerTokenParameter": "/aiadmin/yclients-partner-token",
                     "JwtSecretParameter": "/aiadmin/jwt-secret"}


class UsageError(RuntimeError):
    """The command line or samconfig.toml cannot be used (exit 2)."""


@dataclass(frozen=True)
class StageConfig:
    env: str
    stack_name: str
    region: str
    overrides: dict[str, str]


def read_samconfig(path: Path, env: str) -> StageConfig:
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: {exc}") from exc
    section = config.get(env, {}).get("deploy", {}).get("parameters")
    if not section:
        stages = sorted(k for k, v in config.items() if isinstance(v, dict) and "deploy" in v)
        raise UsageError(f"{path} has no [{env}.deploy.parameters]; stages: {', '.join(stages)}")
    raw = section.get("parameter_overrides", [])
    tokens = shlex.split(raw) if isinstance(raw, str) else [str(t) for t in raw]
    overrides = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise UsageError(f"{path} [{env}]: parameter override {token!r} is not Key=Value")
        overrides[key] = value
    for key in ("stack_name", "region"):
        if not section.get(key):
            raise UsageError(f"{path} [{env}.deploy.parameters]: {key} is missing")
    return StageConfig(env, str(section["stack_name"]), str(section["region"]), overrides)


@dataclass
class Report:
    """Check lines as they happen: `ok` or `FAIL` with what to do."""

    problems: list[str] = field(default_factory=list)
    out: Callable[[str], None] = print

    def ok(self, what: str, detail: str) -> None:
        self.out(f"  ok    {what}: {detail}")

    def fail(self, what: str, detail: str, fix: str) -> None:
        self.problems.append(what)
        self.out(f"  FAIL  {what}: {detail}\n        -> {fix}")


@dataclass
class Step:
    title: str
    command: list[str] | None = None  # shown and run as is; None: an AWS API call done in-process
    run: Callable[[], None] | None = None
    stdin: bytes | None = None


@dataclass
class Plan:
    config: StageConfig
    tag: str
    account: str | None = None
    image: str | None = None
    image_pushed: bool = False
    repository_ready: bool = False
    steps: list[Step] = field(default_factory=list)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise UsageError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def image_tag(explicit: str | None, report: Report) -> str:
    """The git commit (12 hex digits): a tag is never reused for other bits. Uncommitted changes
    to tracked files would be built into an image named after a commit without them: refused."""
    if explicit:
        report.ok("image tag", f"{explicit} (given)")
        return explicit
    commit = _git("rev-parse", "--short=12", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        report.fail("image tag", f"uncommitted changes on top of {commit}",
                    "commit them (the tag names a commit), or pass TAG=<tag> deliberately")
    else:
        report.ok("image tag", f"{commit} (git HEAD)")
    return commit


def _client_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


class Checks:
    """Every input of a deploy, checked read-only."""

    def __init__(self, session: Any, config: StageConfig, report: Report, docker: str, sam: str) -> None:
        self.session, self.config, self.report = session, config, report
        self.docker, self.sam = docker, sam

    def client(self, service: str) -> Any:
        return self.session.client(service, region_name=self.config.region)

    def placeholders(self) -> None:
        left = sorted(k for k, v in self.config.overrides.items() if PLACEHOLDER in v)
        if left:
            self.report.fail("samconfig.toml", f"[{self.config.env}] still has placeholders: {', '.join(left)}",
                             "replace the REPLACE_ME_... values (see the comment at the top of samconfig.toml)")
        else:
            self.report.ok("samconfig.toml", f"[{self.config.env}] {len(self.config.overrides)} parameters set")
        if "RunnerImageUri" in self.config.overrides:
            self.report.ok("RunnerImageUri", "set in samconfig.toml but replaced by the image built here")

    def account(self) -> str | None:
        try:
            identity = self.client("sts").get_caller_identity()
        except NoCredentialsError:
            self.report.fail("AWS credentials", "none found",
                             "run `aws configure` / `aws sso login`, or set AWS_PROFILE (boto3's default chain)")
            return None
        except (ClientError, BotoCoreError) as exc:
            self.report.fail("AWS credentials", _client_error(exc), "check the credentials of boto3's default chain")
            return None
        self.report.ok("account", f"{identity['Account']} as {identity['Arn']}")
        self.report.ok("region", self.config.region)
        return str(identity["Account"])

    def secret_parameters(self) -> None:
        ssm = self.client("ssm")
        for key in SECRET_PARAMETERS:
            name = self.config.overrides.get(key, TEMPLATE_DEFAULTS[key])
            try:
                found = ssm.get_parameter(Name=name, WithDecryption=False)["Parameter"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                    self.report.fail(f"SSM {name}", "missing", f"aws ssm put-parameter --region {self.config.region} "
                                     f"--type SecureString --name {name} --value '<secret>'")
                else:
                    self.report.fail(f"SSM {name}", _client_error(exc), "allow ssm:GetParameter to the deployer")
                continue
            if found.get("Type") != "SecureString":
                self.report.fail(f"SSM {name}", f"is a {found.get('Type')}", "recreate it as a SecureString")
            else:
                self.report.ok(f"SSM {name}", "SecureString exists (value not read)")

    def network(self) -> None:
        vpc = self.config.overrides.get("VpcId", "")
        subnets = [s for s in self.config.overrides.get("SubnetIds", "").split(",") if s]
        if not vpc or PLACEHOLDER in vpc or not subnets or any(PLACEHOLDER in s for s in subnets):
            return  # reported with the placeholders
        ec2 = self.client("ec2")
        try:
            ec2.describe_vpcs(VpcIds=[vpc])
            found = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
        except ClientError as exc:
            self.report.fail("VPC and subnets", _client_error(exc), "set VpcId and SubnetIds to existing ones")
            return
        outside = [s["SubnetId"] for s in found if s["VpcId"] != vpc]
        zones = {s["AvailabilityZone"] for s in found}
        if outside:
            self.report.fail("subnets", f"{', '.join(outside)} not in {vpc}", "use subnets of VpcId")
        elif len(zones) < 2:
            self.report.fail("subnets", "all in one Availability Zone",
                             "give two public subnets in different zones (EFS mount targets)")
        else:
            self.report.ok("VPC and subnets", f"{vpc}; {', '.join(subnets)} in {', '.join(sorted(zones))}")

    def repository(self, plan: Plan) -> None:
        ecr = self.client("ecr")
        try:
            repo = ecr.describe_repositories(repositoryNames=[REPOSITORY_NAME])["repositories"][0]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
                self.report.fail("ECR repository", _client_error(exc), "allow ecr:DescribeRepositories")
                return
            plan.image = (f"{plan.account}.dkr.ecr.{self.config.region}.amazonaws.com/"
                          f"{REPOSITORY_NAME}:{plan.tag}")
            self.report.ok("ECR repository", f"{REPOSITORY_NAME} not there yet: stack {REPOSITORY_STACK} creates it")
            self.report.ok("image", f"{plan.image} (to build and push)")
            return
        plan.repository_ready = True
        plan.image = f"{repo['repositoryUri']}:{plan.tag}"
        self.report.ok("ECR repository", repo["repositoryUri"])
        try:
            ecr.describe_images(repositoryName=REPOSITORY_NAME, imageIds=[{"imageTag": plan.tag}])
            plan.image_pushed = True
            self.report.ok("image", f"{plan.image} (already pushed: not rebuilt)")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ImageNotFoundException":
                self.report.fail("image", _client_error(exc), "allow ecr:DescribeImages")
            else:
                self.report.ok("image", f"{plan.image} (to build and push)")

    def tools(self, plan: Plan) -> None:
        if not plan.image_pushed:
            try:
                done = subprocess.run([self.docker, "info", "--format", "{{.ServerVersion}}"],
                                      capture_output=True, text=True, timeout=20)
                ready = done.returncode == 0
                detail = (done.stdout if ready else done.stderr).strip().splitlines()[-1:]
            except (OSError, subprocess.TimeoutExpired) as exc:
                ready, detail = False, [str(exc)]
            if ready:
                self.report.ok("docker", f"engine {detail[0] if detail else '?'} (builds the image)")
            else:
                self.report.fail("docker", f"no engine reachable ({detail[0] if detail else 'no answer'})",
                                 "start Docker (with buildx for linux/arm64), or deploy a TAG already pushed")
        try:
            done = subprocess.run([self.sam, "--version"], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise OSError(done.stderr.strip())
            self.report.ok("sam", done.stdout.strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.report.fail("sam", str(exc), "make deploy installs it in .venv (aws-sam-cli)")


def deploy_repository_stack(session: Any, region: str) -> None:
    """Create or update the bootstrap stack and wait for it."""
    cfn = session.client("cloudformation", region_name=region)
    body = REPOSITORY_TEMPLATE.read_text()
    parameters = [{"ParameterKey": "RepositoryName", "ParameterValue": REPOSITORY_NAME}]
    try:
        status = cfn.describe_stacks(StackName=REPOSITORY_STACK)["Stacks"][0]["StackStatus"]
    except ClientError:
        status = None
    if status is None:
        cfn.create_stack(StackName=REPOSITORY_STACK, TemplateBody=body, Parameters=parameters)
        cfn.get_waiter("stack_create_complete").wait(StackName=REPOSITORY_STACK, WaiterConfig={"Delay": 5})
        return
    try:
        cfn.update_stack(StackName=REPOSITORY_STACK, TemplateBody=body, Parameters=parameters)
    except ClientError as exc:
        if "No updates are to be performed" in str(exc):
            return
        raise
    cfn.get_waiter("stack_update_complete").wait(StackName=REPOSITORY_STACK, WaiterConfig={"Delay": 5})


def plan_steps(plan: Plan, session: Any, docker: str, sam: str) -> None:
    region = plan.config.region
    image = plan.image or f"{plan.account or '<account>'}.dkr.ecr.{region}.amazonaws.com/{REPOSITORY_NAME}:{plan.tag}"
    registry = image.split("/", 1)[0]
    if not plan.repository_ready:
        plan.steps.append(Step(f"CloudFormation: deploy stack {REPOSITORY_STACK} ({REPOSITORY_TEMPLATE.name}): "
                               f"the ECR repository {REPOSITORY_NAME}",
                               run=lambda: deploy_repository_stack(session, region)))
    if not plan.image_pushed:
        def login() -> None:
            data = session.client("ecr", region_name=region).get_authorization_token()["authorizationData"][0]
            password = base64.b64decode(data["authorizationToken"]).decode().partition(":")[2]
            _run([docker, "login", "--username", "AWS", "--password-stdin", registry], password.encode())

        plan.steps.append(Step(f"docker login {registry} (ECR authorization token, password on stdin)", run=login))
        plan.steps.append(Step("build the runner image", [docker, "build", "--platform", "linux/arm64",
                                                          "-f", "wa_runner/Dockerfile", "-t", image, "."]))
        plan.steps.append(Step("push it", [docker, "push", image]))
    overrides = {**plan.config.overrides, "RunnerImageUri": image}
    rendered = " ".join(f"{k}={shlex.quote(v)}" for k, v in overrides.items())
    plan.steps.append(Step("build the functions and the layer", [sam, "build"]))
    plan.steps.append(Step(f"deploy stack {plan.config.stack_name}",
                           [sam, "deploy", "--config-env", plan.config.env, "--parameter-overrides", rendered]))


def _run(command: Sequence[str], stdin: bytes | None = None) -> None:
    done = subprocess.run(list(command), cwd=ROOT, input=stdin, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} {command[1]} exited with {done.returncode}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="staging", help="samconfig.toml config environment (staging, prod)")
    parser.add_argument("--dry-run", action="store_true", help="check and print the steps; change nothing")
    parser.add_argument("--tag", help="image tag (default: the git commit)")
    parser.add_argument("--config", type=Path, default=ROOT / "samconfig.toml")
    parser.add_argument("--docker", default=os.environ.get("DOCKER", "docker"))
    venv_sam = shutil.which("sam", path=str(Path(sys.executable).parent))
    parser.add_argument("--sam", default=os.environ.get("SAM") or venv_sam or "sam")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = read_samconfig(args.config, args.env)
    except UsageError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    mode = "dry run: nothing will change" if args.dry_run else "deploying"
    print(f"{config.env}: stack {config.stack_name} in {config.region} ({mode})")
    report = Report()
    session = boto3.session.Session()
    checks = Checks(session, config, report, args.docker, args.sam)
    try:
        plan = Plan(config, image_tag(args.tag, report))
    except UsageError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    checks.placeholders()
    plan.account = checks.account()
    if plan.account is not None:
        checks.secret_parameters()
        checks.network()
        checks.repository(plan)
    checks.tools(plan)
    plan_steps(plan, session, args.docker, args.sam)
    print("steps:")
    for number, step in enumerate(plan.steps, 1):
        print(f"  {number}. {step.title}")
        if step.command:
            print(f"     $ {shlex.join(step.command)}")
    if report.problems:
        print(f"not ready: {len(report.problems)} problem(s): {', '.join(report.problems)}; nothing was changed")
        return 1
    if args.dry_run:
        print("dry run: every check passed; nothing was changed")
        return 0
    for number, step in enumerate(plan.steps, 1):
        print(f"[{number}/{len(plan.steps)}] {step.title}", flush=True)
        try:
            if step.run is not None:
                step.run()
            elif step.command:
                _run(step.command, step.stdin)
        except (RuntimeError, ClientError, BotoCoreError, OSError) as exc:
            print(f"deploy: step {number} failed: {exc}", file=sys.stderr)
            return 1
    print(f"deployed {config.stack_name} with {plan.image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
