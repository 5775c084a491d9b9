"""Cold start: a handler's import builds no AWS client, reads no setting and no secret, builds no
pydantic validator, imports none of the heavy modules only some routes use (they are named in its
FIRST_USE_IMPORTS and imported by those routes) and, with tracing off, never imports the X-Ray
SDK. (The import-time figures themselves come from bench/cold_start.py.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from functools import cache
from pathlib import Path

import pytest

from aiadmin.db import open_store
from aiadmin.observability import tracer, tracing_enabled
from aiadmin.preload import preload
from local.template import ROOT

ENV = {
    "TABLE_NAME": "t", "YCLIENTS_APP_ID": "4242", "YCLIENTS_PARTNER_TOKEN": "p" * 12, "JWT_SECRET": "j" * 40,
    "WEBSOCKET_URL": "wss://x.example/prod", "WEBSOCKET_MANAGEMENT_URL": "https://x.example/prod",
    "ENTITY_QUEUE_URL": "https://sqs.example/1/q", "AWS_LAMBDA_FUNCTION_NAME": "f",
}
# Imported by some routes only (drawing a QR, checking a phone number, issuing or checking a
# token, calling YClients): never by importing a handler.
HEAVY = ("qrcode", "phonenumbers", "jwt", "requests", "aiadmin.yclients", "aws_xray_sdk")
FUNCTIONS = ["redirect", "callback", "ws_connect", "ws_message", "state_stream"]
PROBE = """
import json, sys
import app
# The handler's cached factories (settings, clients): whether each has built its object.
clients = {n: f.cache_info().currsize > 0 for n, f in vars(app).items() if callable(f) and hasattr(f, "cache_info")}
# The shared ones (the store and the pusher, one per table or endpoint), where the handler loaded them.
for module, name in (("aiadmin.db", "open_store"), ("aiadmin.push", "open_pusher")):
    shared = getattr(sys.modules.get(module), name, None)
    if shared is not None:
        clients[name] = shared.cache_info().currsize > 0
built_models = [f"{m.__name__}.{k}" for m in (sys.modules.get("aiadmin.models"), app) if m is not None
                for k, v in vars(m).items()
                if isinstance(v, type) and v.__module__ == m.__name__ and getattr(v, "__pydantic_complete__", False)]
print(json.dumps({"xray": "aws_xray_sdk" in sys.modules, "clients": clients,
                  "botocore_clients": "botocore.client" in sys.modules and bool(
                      [o for o in __import__("gc").get_objects() if type(o).__name__ == "DynamoDB"]),
                  "modules": sorted(sys.modules), "first_use": list(app.FIRST_USE_IMPORTS),
                  "built_models": built_models}))
"""


def _import(function: str, tracing: bool, code: str = PROBE, extra_path: str = "",
            env: dict[str, str] | None = None) -> dict[str, object]:
    env = {**os.environ, **ENV, **(env or {})}
    env = {key: value for key, value in env.items() if value}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    if not tracing:
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "functions" / function, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@cache
def _cold_import(function: str) -> str:
    """One fresh interpreter's import of the handler, tracing off (as JSON: each test reads its own
    copy); the two tests below look at the same import, so it runs once for both."""
    return json.dumps(_import(function, tracing=False))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_importing_a_handler_builds_no_client_and_no_xray_when_tracing_is_off(function: str) -> None:
    result = json.loads(_cold_import(function))
    assert result["xray"] is False
    assert result["clients"] and not any(result["clients"].values())  # type: ignore[union-attr]
    assert result["botocore_clients"] is False


@pytest.mark.parametrize("function", FUNCTIONS)
def test_importing_a_handler_leaves_route_only_modules_and_validators_to_first_use(function: str) -> None:
    result = json.loads(_cold_import(function))
    modules = set(result["modules"])  # type: ignore[call-overload]
    first_use = set(result["first_use"])  # type: ignore[call-overload]
    # A library counts as imported as soon as its top package is (qrcode for qrcode.image.svg).
    roots = {name if name.startswith("aiadmin.") else name.split(".")[0] for name in (*HEAVY, *first_use)}
    loaded = roots & modules
    assert not loaded, f"imported with the handler (cold start): {sorted(loaded)}"
    assert result["built_models"] == [], "pydantic validators are built on first use (defer_build)"
    if "aiadmin.db" not in first_use:  # the store's models are imported, only not built
        assert "aiadmin.models" in modules


def test_redirect_preloads_its_first_use_work_before_a_snapstart_snapshot(tmp_path: Path) -> None:
    """Lambda's runtime calls the registered hooks before the snapshot (`snapshot_restore_py`,
    present in Lambda's Python runtimes only; played here by a module that records them). The
    snapshot then holds the imports, the built validators and the settings, but no client and no
    secret: with the secrets in SSM (as in AWS), nothing calls SSM until a request needs one."""
    (tmp_path / "snapshot_restore_py.py").write_text(
        "hooks = []\n"
        "def register_before_snapshot(func, *args, **kwargs):\n"
        "    hooks.append((func, args, kwargs))\n"
        "    return func\n")
    probe = PROBE.replace("import app\n", "from aws_lambda_powertools.utilities import parameters\n"
                          "ssm_calls = []\n"
                          "def get_parameter(name, **options):\n"
                          "    ssm_calls.append((name, options))\n"
                          "    return 'secret-from-ssm-' + 'x' * 32\n"
                          "parameters.get_parameter = get_parameter\n"
                          "import app\nimport snapshot_restore_py\n"
                          "assert 'aiadmin.yclients' not in sys.modules\n"
                          "for func, args, kwargs in snapshot_restore_py.hooks:\n"
                          "    func(*args, **kwargs)\n"
                          "assert ssm_calls == [], ssm_calls\n"
                          "held = repr(app.settings()) + repr(vars(app))\n"
                          "assert 'secret-from-ssm' not in held and '/aiadmin/jwt' in repr(app.settings())\n"
                          "assert app.settings().jwt_secret.reveal().startswith('secret-from-ssm')\n"
                          "assert ssm_calls == [('/aiadmin/jwt', {'decrypt': True, 'max_age': 300})], ssm_calls\n", 1)
    secrets_in_ssm = {"JWT_SECRET": "", "YCLIENTS_PARTNER_TOKEN": "", "JWT_SECRET_PARAM": "/aiadmin/jwt",
                      "YCLIENTS_PARTNER_TOKEN_PARAM": "/aiadmin/partner-token"}
    result = _import("redirect", tracing=False, code=probe, extra_path=str(tmp_path), env=secrets_in_ssm)
    modules = set(result["modules"])  # type: ignore[call-overload]
    assert {"aiadmin.db", "aiadmin.onboarding", "aiadmin.consent", "aiadmin.yclients", "requests", "jwt",
            "phonenumbers", "pydantic_settings"} <= modules
    assert {"aiadmin.models.Salon", "aiadmin.models.UserData"} <= set(result["built_models"])  # type: ignore[arg-type]
    clients: dict[str, bool] = result["clients"]  # type: ignore[assignment]
    assert clients.pop("settings") is True  # built before the snapshot (no secret in it: see above)
    assert clients and not any(clients.values())  # a snapshot holds no client


def test_preload_imports_and_builds_deferred_models_only() -> None:
    import aiadmin.models as models

    preload(["json"])
    assert "json" in sys.modules
    assert models.Salon.__pydantic_complete__ and models.StateMessage.__pydantic_complete__


def test_tracing_on_uses_powertools_tracer() -> None:
    assert _import("ws_connect", tracing=True)["xray"] is True


def test_tracing_switch_follows_powertools_rules() -> None:
    assert tracing_enabled({"AWS_LAMBDA_FUNCTION_NAME": "f"})
    assert not tracing_enabled({"AWS_LAMBDA_FUNCTION_NAME": "f", "POWERTOOLS_TRACE_DISABLED": "true"})
    assert not tracing_enabled({})  # not in Lambda (the runner, the local stack)
    assert not tracing_enabled({"AWS_LAMBDA_FUNCTION_NAME": "f", "AWS_SAM_LOCAL": "true"})


def test_with_tracing_off_the_tracer_decorates_as_usual_without_xray() -> None:
    assert "aws_xray_sdk" not in type(tracer.provider).__module__

    @tracer.capture_method(capture_response=False)
    def handler(event: object) -> str:
        return f"done {event}"

    assert handler(1) == "done 1"


def test_a_handlers_settings_and_clients_are_built_once_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"ws_connect_{uuid.uuid4().hex}",
                                                  ROOT / "functions" / "ws_connect" / "app.py")
    assert spec and spec.loader
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.settings.cache_info().currsize == 0
    store = app.store()
    assert app.store() is store and app.settings() is app.settings()
    assert app.settings.cache_info().currsize == 1 and store is open_store(app.settings().table_name)
