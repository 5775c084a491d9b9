"""Typed settings (aiadmin.config): every problem in one message, nothing secret echoed, and
secrets in SSM read when used (never at load), with powertools' cache age."""

from typing import Any

import pytest

from aiadmin.config import (
    SECRET_MAX_AGE_SECONDS,
    ComponentSettings,
    JwtSecret,
    LocalFrameAncestors,
    PartnerToken,
    SettingsError,
    TableName,
    WaKeysPostgresUrl,
    WebSocketUrl,
    YClientsAppId,
    YClientsBaseUrl,
    YClientsChannels,
)


class Several(ComponentSettings):
    table_name: TableName
    yclients_app_id: YClientsAppId
    yclients_partner_token: PartnerToken
    jwt_secret: JwtSecret
    websocket_url: WebSocketUrl


class Jwt(ComponentSettings):
    jwt_secret: JwtSecret


class Secrets(ComponentSettings):
    jwt_secret: JwtSecret
    yclients_partner_token: PartnerToken


class Api(ComponentSettings):
    yclients_base_url: YClientsBaseUrl
    yclients_app_id: YClientsAppId


class Channels(ComponentSettings):
    yclients_channels: YClientsChannels


class PostgresKeys(ComponentSettings):
    wa_keys_postgres_url: WaKeysPostgresUrl


class FrameAncestors(ComponentSettings):
    page_local_frame_ancestors: LocalFrameAncestors


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """SSM as powertools Parameters serves it: the values, and every call made."""
    served: dict[str, Any] = {"values": {}, "calls": []}

    def get_parameter(name: str, **options: Any) -> str:
        served["calls"].append((name, options))
        return str(served["values"][name])

    from aws_lambda_powertools.utilities import parameters

    monkeypatch.setattr(parameters, "get_parameter", get_parameter)
    return served


def test_every_problem_is_reported_in_one_message() -> None:
    with pytest.raises(SettingsError) as error:
        Several.load({"YCLIENTS_APP_ID": "abc", "WEBSOCKET_URL": "not a url"})
    message = str(error.value)
    for expected in ("TABLE_NAME", "YCLIENTS_APP_ID", "YCLIENTS_PARTNER_TOKEN", "JWT_SECRET", "WEBSOCKET_URL"):
        assert expected in message
    assert "JWT_SECRET (or JWT_SECRET_PARAM): missing" in message and "TABLE_NAME: missing" in message


def test_secrets_are_never_echoed() -> None:
    with pytest.raises(SettingsError) as error:
        Jwt.load({"JWT_SECRET": "short-secret-value"})
    assert "short-secret-value" not in str(error.value)
    settings = Jwt.load({"JWT_SECRET": "x" * 40})
    assert "x" * 40 not in repr(settings) and "x" * 40 not in repr(settings.jwt_secret)
    assert settings.jwt_secret.reveal() == "x" * 40


def test_defaults_and_parsing() -> None:
    settings = Api.load({"YCLIENTS_APP_ID": "77"})
    assert settings.yclients_base_url == "https://api.yclients.com"
    assert settings.yclients_app_id == 77


def test_the_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YCLIENTS_APP_ID", "78")
    assert Api.load().yclients_app_id == 78 and Api().yclients_app_id == 78


def test_a_secret_in_parameter_store_is_read_on_use_with_a_cache_age(ssm: dict[str, Any]) -> None:
    ssm["values"]["/aiadmin/jwt"] = "p" * 40
    settings = Jwt.load({"JWT_SECRET_PARAM": "/aiadmin/jwt"})
    assert ssm["calls"] == []  # not at load: a SnapStart snapshot taken after it holds no secret
    assert settings.jwt_secret.parameter == "/aiadmin/jwt"
    assert settings.jwt_secret.reveal() == "p" * 40
    assert ssm["calls"] == [("/aiadmin/jwt", {"decrypt": True, "max_age": SECRET_MAX_AGE_SECONDS})]


def test_a_secret_that_cannot_be_read_or_does_not_fit_is_a_settings_error(ssm: dict[str, Any]) -> None:
    settings = Jwt.load({"JWT_SECRET_PARAM": "/aiadmin/missing"})
    with pytest.raises(SettingsError, match="JWT_SECRET_PARAM: cannot read the parameter"):
        settings.jwt_secret.reveal()
    ssm["values"]["/aiadmin/short"] = "short-secret-in-ssm"
    with pytest.raises(SettingsError) as error:
        Jwt.load({"JWT_SECRET_PARAM": "/aiadmin/short"}).jwt_secret.reveal()
    assert "JWT_SECRET_PARAM" in str(error.value) and "at least 32" in str(error.value)
    assert "short-secret-in-ssm" not in str(error.value)


def test_the_variable_wins_over_the_parameter(ssm: dict[str, Any]) -> None:
    settings = Jwt.load({"JWT_SECRET": "v" * 40, "JWT_SECRET_PARAM": "/aiadmin/jwt"})
    assert settings.jwt_secret.reveal() == "v" * 40 and ssm["calls"] == []


def test_activation_channels_are_a_checked_list() -> None:
    assert Channels.load({"YCLIENTS_CHANNELS": "whatsapp, sms"}).yclients_channels == ("whatsapp", "sms")
    assert Channels.load({"YCLIENTS_CHANNELS": "none"}).yclients_channels == ()
    # None unless named: declaring `whatsapp` offers YClients' notifications to us.
    assert Channels.load({}).yclients_channels == ()
    assert Channels.load({"YCLIENTS_CHANNELS": ""}).yclients_channels == ()
    with pytest.raises(SettingsError, match="YCLIENTS_CHANNELS"):
        Channels.load({"YCLIENTS_CHANNELS": "telegram"})


def test_keys_postgres_url_is_optional_checked_and_secret(ssm: dict[str, Any]) -> None:
    assert PostgresKeys.load({}).wa_keys_postgres_url is None
    assert PostgresKeys.load({"WA_KEYS_POSTGRES_URL": ""}).wa_keys_postgres_url is None
    url = "postgresql://runner:s3cret-pass@db.internal:5432/whatsapp"
    settings = PostgresKeys.load({"WA_KEYS_POSTGRES_URL": url})
    assert settings.wa_keys_postgres_url is not None and settings.wa_keys_postgres_url.reveal() == url
    assert "s3cret" not in repr(settings)
    ssm["values"]["/aiadmin/pg"] = url
    from_ssm = PostgresKeys.load({"WA_KEYS_POSTGRES_URL_PARAM": "/aiadmin/pg"}).wa_keys_postgres_url
    assert from_ssm is not None and from_ssm.reveal() == url
    with pytest.raises(SettingsError) as error:
        PostgresKeys.load({"WA_KEYS_POSTGRES_URL": "mysql://u:hunter2@db/x"})
    assert "WA_KEYS_POSTGRES_URL" in str(error.value) and "hunter2" not in str(error.value)


@pytest.mark.parametrize("runtime", ["AWS_LAMBDA_FUNCTION_NAME", "ECS_CONTAINER_METADATA_URI_V4"])
def test_the_local_stacks_secrets_are_refused_in_aws(runtime: str, ssm: dict[str, Any]) -> None:
    from aiadmin.config import LOCAL_JWT_SECRET, LOCAL_PARTNER_TOKEN

    local = {"JWT_SECRET": LOCAL_JWT_SECRET, "YCLIENTS_PARTNER_TOKEN": LOCAL_PARTNER_TOKEN}
    # On a developer's machine they are the defaults of the local stack.
    assert Secrets.load(local).jwt_secret.reveal() == LOCAL_JWT_SECRET
    with pytest.raises(SettingsError) as error:
        Secrets.load({**local, runtime: "x"})
    message = str(error.value)
    assert "JWT_SECRET: is the local stack's built-in test value" in message
    assert "YCLIENTS_PARTNER_TOKEN: is the local stack's built-in test value" in message
    assert LOCAL_JWT_SECRET not in message and LOCAL_PARTNER_TOKEN not in message
    # A variant of them is caught too; a real secret passes.
    with pytest.raises(SettingsError):
        Jwt.load({"JWT_SECRET": "my-copy-not-a-secret-0123456789abcdef", runtime: "x"})
    assert Jwt.load({"JWT_SECRET": "r" * 40, runtime: "x"}).jwt_secret.reveal() == "r" * 40
    # Copied into the SSM parameter, it is refused when read.
    ssm["values"]["/aiadmin/jwt"] = LOCAL_JWT_SECRET
    from_ssm = Jwt.load({"JWT_SECRET_PARAM": "/aiadmin/jwt", runtime: "x"})
    with pytest.raises(SettingsError, match="built-in test value") as error:
        from_ssm.jwt_secret.reveal()
    assert LOCAL_JWT_SECRET not in str(error.value)


def test_the_local_stack_refuses_a_remote_host_without_the_flag() -> None:
    from local.stack import RemoteHostRefused, check_host

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_host(host, allow_remote=False)
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):  # noqa: S104
        with pytest.raises(RemoteHostRefused, match="--allow-remote"):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)


def test_local_frame_ancestors_are_refused_in_aws() -> None:
    local = {"PAGE_LOCAL_FRAME_ANCESTORS": "http://127.0.0.1:* http://localhost:*"}
    assert FrameAncestors.load(local).page_local_frame_ancestors == ["http://127.0.0.1:*", "http://localhost:*"]
    assert FrameAncestors.load({}).page_local_frame_ancestors == []
    with pytest.raises(SettingsError, match="PAGE_LOCAL_FRAME_ANCESTORS"):
        FrameAncestors.load({**local, "AWS_LAMBDA_FUNCTION_NAME": "f"})
    assert FrameAncestors.load({"AWS_LAMBDA_FUNCTION_NAME": "f"}).page_local_frame_ancestors == []


def test_each_component_names_exactly_the_settings_it_reads() -> None:
    """A setting a component did not declare is not there (mypy says so too: the fields are typed)."""
    from aiadmin.settings import SocketConnectSettings, StateStreamSettings

    assert set(SocketConnectSettings.model_fields) == {"table_name", "jwt_secret"}
    assert "jwt_secret" not in StateStreamSettings.model_fields
    settings = SocketConnectSettings.load({"TABLE_NAME": "t", "JWT_SECRET": "j" * 40})
    with pytest.raises(AttributeError):
        _ = settings.websocket_management_url  # type: ignore[attr-defined]
