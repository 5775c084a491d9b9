"""The local stack routes by reading template.yaml: these are the routes it must find there."""

from local.template import load_template


def test_http_and_websocket_routes_come_from_the_template() -> None:
    template = load_template()
    routes = {(r.method, r.path): r.function for r in template.http_routes}
    assert routes[("GET", "/auth/yclients/redirect")] == "RedirectFunction"
    assert routes[("GET", "/marketplace/onboarding")] == "RedirectFunction"
    assert routes[("POST", "/callback/yclients")] == "CallbackFunction"
    assert template.ws_routes == {"$connect": "WsConnectFunction", "$disconnect": "WsConnectFunction",
                                  "$default": "WsNotifyFunction"}
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

    sources = [*(ROOT / "layers" / "common" / "aiadmin").glob("*.py"), *(ROOT / "wa_runner").glob("*.py"),
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
