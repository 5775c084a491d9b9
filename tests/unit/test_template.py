"""The local stack routes by reading template.yaml: these are the routes it must find there."""

from pathlib import Path
from typing import Any

from local.template import load_template


def test_cloudformation_short_forms_read_as_their_long_forms(tmp_path: Path) -> None:
    """template.yaml is read with PyYAML and CloudFormation's tags, as cfn-lint reads them."""
    path = tmp_path / "template.yaml"
    path.write_text("""
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Condition: IsProd
    Properties:
      Handler: app.lambda_handler
      CodeUri: functions/x
      Environment:
        Variables:
          TABLE: !Ref AppTable
          ARN: !GetAtt AppTable.StreamArn
          LISTED: !GetAtt [AppTable, Arn]
          URL: !Sub "https://${Api}.example"
          PAIR: !Sub ["${X}", {X: !Ref Stage}]
          CHOSEN: !If [IsProd, a, b]
          BY_NAME: !Transform {Name: AWS::Include, Parameters: {Location: s3://x}}
          WHEN: !Condition IsProd
""")
    template = load_template(path)
    assert template.resources["Fn"]["Condition"] == "IsProd"
    assert template.functions["Fn"].environment == {
        "TABLE": {"Ref": "AppTable"},
        "ARN": {"Fn::GetAtt": ["AppTable", "StreamArn"]},
        "LISTED": {"Fn::GetAtt": ["AppTable", "Arn"]},
        "URL": {"Fn::Sub": "https://${Api}.example"},
        "PAIR": {"Fn::Sub": ["${X}", {"X": {"Ref": "Stage"}}]},
        "CHOSEN": {"Fn::If": ["IsProd", "a", "b"]},
        "BY_NAME": {"Fn::Transform": {"Name": "AWS::Include", "Parameters": {"Location": "s3://x"}}},
        "WHEN": {"Condition": "IsProd"},
    }


def test_http_and_websocket_routes_come_from_the_template() -> None:
    template = load_template()
    routes = {(r.method, r.path): r.function for r in template.http_routes}
    assert routes[("GET", "/auth/yclients/redirect")] == "RedirectFunction"
    assert routes[("GET", "/marketplace/onboarding")] == "RedirectFunction"
    assert routes[("POST", "/callback/yclients")] == "CallbackFunction"
    assert template.ws_routes == {"$connect": "WsConnectFunction", "$disconnect": "WsConnectFunction",
                                  "$default": "WsMessageFunction"}
    assert [(s.function, s.table) for s in template.streams] == [("StateStreamFunction", "AppTable")]


def test_every_function_points_at_existing_code() -> None:
    for spec in load_template().functions.values():
        module = spec.code_dir / f"{spec.module}.py"
        assert module.is_file(), module
        assert f"def {spec.handler}(" in module.read_text()


def test_table_has_the_session_index_ttl_and_stream() -> None:
    props = load_template().tables()["AppTable"]
    assert [i["IndexName"] for i in props["GlobalSecondaryIndexes"]] == ["SessionIndex"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["StreamSpecification"]["StreamViewType"] == "NEW_IMAGE"


def test_every_alarm_on_our_metrics_watches_a_metric_the_code_emits() -> None:
    """An alarm on a misspelt metric never fires: each one must match an `add_metric` call."""
    import re

    from local.template import ROOT

    sources = [*(ROOT / "layers" / "common" / "aiadmin").rglob("*.py"), *(ROOT / "wa_runner").glob("*.py"),
               *(ROOT / "functions").glob("*/app.py")]
    code = "\n".join(path.read_text() for path in sources)
    # (the runner's event table names its metrics as data: `metric="..."`)
    emitted = set(re.findall(r'add_metric\(\s*name="(\w+)"', code)) | set(re.findall(r'metric="(\w+)"', code))
    alarms = {name: res["Properties"] for name, res in load_template().resources.items()
              if res["Type"] == "AWS::CloudWatch::Alarm" and res["Properties"].get("Namespace") == "AIAdmin/Onboarding"}
    assert {"ActivationFailedAlarm", "ActivationExpiredAlarm"} <= alarms.keys()
    for name, props in alarms.items():
        assert props["MetricName"] in emitted, name
        # powertools Metrics writes every metric with the service dimension.
        assert props["Dimensions"] == [{"Name": "service", "Value": "aiadmin-onboarding"}], name


def _emitted_metrics() -> set[str]:
    """Every metric name the code can emit: literal `add_metric(name="X")`, the CamelCase
    literals of a file that passes the name in a variable (`add_metric(name=metric)`), and
    `f"Prefix_{state.value}"` templates expanded over the salon states."""
    import re

    from aiadmin.states import SalonState
    from local.template import ROOT

    sources = [*(ROOT / "layers" / "common" / "aiadmin").rglob("*.py"), *(ROOT / "wa_runner").glob("*.py"),
               *(ROOT / "functions").glob("*/app.py")]
    emitted: set[str] = set()
    for path in sources:
        code = path.read_text()
        emitted |= set(re.findall(r'add_metric\(\s*name="(\w+)"', code))
        # The runner's event table names its metrics as data (`metric="..."`, `metric=f"..."`).
        emitted |= set(re.findall(r'\bmetric="(\w+)"', code))
        for prefix in re.findall(r'(?:add_metric\(\s*name|\bmetric)=f"(\w+_)\{\w+\.value\}"', code):
            emitted |= {prefix + state.value for state in SalonState}
        if re.search(r"add_metric\(\s*name=[a-z_]+\b", code):
            # The name is a variable: the CamelCase literals of that file are its candidates
            # (`(S.BANNED, "SessionsBanned")`, `_refuse(..., "PairingPhoneRefused")`).
            emitted |= set(re.findall(r'"((?:[A-Z][a-z0-9]+){2,})"', code))
    return emitted


def _dashboard() -> dict[str, Any]:
    import json
    import re

    body = load_template().resources["OnboardingDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # ${AWS::Region}, ${SomeFunction}, ${SomeAlarm.Arn}: any value will do to read the JSON.
    parsed: dict[str, Any] = json.loads(re.sub(r"\$\{[\w:.]+\}", "resolved", body))
    return parsed


def test_every_dashboard_widget_names_metrics_the_code_emits() -> None:
    emitted = _emitted_metrics()
    ours: dict[str, set[str]] = {}
    for widget in _dashboard()["widgets"]:
        if widget["type"] != "metric":
            continue
        title = widget["properties"]["title"]
        for metric in widget["properties"]["metrics"]:
            namespace, name = metric[0], metric[1]
            if namespace != "AIAdmin/Onboarding":
                continue
            assert name in emitted, (title, name)
            # powertools Metrics writes every metric with the service dimension.
            assert metric[2:4] == ["service", "aiadmin-onboarding"], (title, name)
            ours.setdefault(title, set()).add(name)
    by_title = {title.split(" (")[0]: names for title, names in ours.items()}
    assert {"RedirectAccepted", "Transition_qr_ready", "Transition_pairing", "Transition_active"} <= by_title[
        "Onboarding funnel"]
    assert {"ActivationFailed", "ActivationExpired", "Linking_link_refused", "Linking_passkey_required",
            "SessionsLoggedOut", "SessionsBanned"} <= by_title["Failures by reason"]
    assert {"SessionsConnected", "SessionsRetrying", "PairingsInFlight"} <= by_title["Runner sessions by phase"]
    assert "RunnerHeartbeat" in by_title["Runner heartbeats and incidents"]
    assert {"YClientsApiError", "YClientsRateLimited"} <= by_title["YClients API"]
    assert {"WebhookRefused", "EntityWebhookRefused"} <= by_title["Refused requests"]


def test_the_dashboard_shows_every_alarm() -> None:
    import re

    body = load_template().resources["OnboardingDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    shown = set(re.findall(r"\$\{(\w+)\.Arn\}", body))
    alarms = {name for name, res in load_template().resources.items() if res["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms <= shown


def test_every_log_group_has_a_retention() -> None:
    resources = load_template().resources
    groups = {name: res for name, res in resources.items() if res["Type"] == "AWS::Logs::LogGroup"}
    for name, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
    # Each function writes to its own group (never to one Lambda creates without a retention).
    functions = {name: res for name, res in resources.items() if res["Type"] == "AWS::Serverless::Function"}
    for name, function in functions.items():
        target = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert target in groups, name
    assert len({f["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] for f in functions.values()}) == len(functions)
    runner = resources["RunnerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert runner["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "RunnerLogGroup"}


def test_redirect_uses_snapstart_and_tracing_can_be_turned_off() -> None:
    template = load_template()
    redirect = template.resources["RedirectFunction"]["Properties"]
    assert redirect["AutoPublishAlias"] == "live" and redirect["SnapStart"] == {"ApplyOn": {"Ref": "RedirectSnapStart"}}
    assert template.globals_env["POWERTOOLS_TRACE_DISABLED"] == {"Fn::If": ["TracingActive", "false", "true"]}
