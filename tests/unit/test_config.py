import pytest

from aiadmin.config import Secret, SettingsError, load_settings

NAMES = ["table_name", "yclients_app_id", "yclients_partner_token", "jwt_secret", "websocket_url"]


def test_every_problem_is_reported_in_one_message() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(NAMES, environ={"YCLIENTS_APP_ID": "abc", "WEBSOCKET_URL": "not a url"})
    message = str(error.value)
    for expected in ("TABLE_NAME", "YCLIENTS_APP_ID", "YCLIENTS_PARTNER_TOKEN", "JWT_SECRET", "WEBSOCKET_URL"):
        assert expected in message


def test_secrets_are_never_echoed() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(["jwt_secret"], environ={"JWT_SECRET": "short-secret-value"})
    assert "short-secret-value" not in str(error.value)
    settings = load_settings(["jwt_secret"], environ={"JWT_SECRET": "x" * 40})
    assert "x" * 40 not in repr(settings.jwt_secret)
    assert settings.jwt_secret == Secret("x" * 40)


def test_defaults_and_parsing() -> None:
    settings = load_settings(["yclients_base_url", "yclients_app_id"], environ={"YCLIENTS_APP_ID": "77"})
    assert settings.yclients_base_url == "https://api.yclients.com"
    assert settings.yclients_app_id == 77


def test_secret_from_parameter_store() -> None:
    asked = []

    def read(name: str) -> str:
        asked.append(name)
        return "p" * 40

    settings = load_settings(["jwt_secret"], environ={"JWT_SECRET_PARAM": "/aiadmin/jwt"}, read_parameter=read)
    assert asked == ["/aiadmin/jwt"]
    assert settings.jwt_secret.reveal() == "p" * 40


def test_unloaded_setting_is_an_error() -> None:
    settings = load_settings(["table_name"], environ={"TABLE_NAME": "t"})
    with pytest.raises(AttributeError):
        _ = settings.jwt_secret


def test_activation_channels_are_a_checked_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YCLIENTS_CHANNELS", "whatsapp, sms")
    assert load_settings(["yclients_channels"]).yclients_channels == ("whatsapp", "sms")
    monkeypatch.setenv("YCLIENTS_CHANNELS", "none")
    assert load_settings(["yclients_channels"]).yclients_channels == ()
    monkeypatch.setenv("YCLIENTS_CHANNELS", "telegram")
    with pytest.raises(SettingsError, match="YCLIENTS_CHANNELS"):
        load_settings(["yclients_channels"])


def test_keys_postgres_url_is_optional_checked_and_secret() -> None:
    assert load_settings(["wa_keys_postgres_url"], environ={}).wa_keys_postgres_url is None
    url = "postgresql://runner:s3cret-pass@db.internal:5432/whatsapp"
    settings = load_settings(["wa_keys_postgres_url"], environ={"WA_KEYS_POSTGRES_URL": url})
    assert settings.wa_keys_postgres_url == Secret(url) and "s3cret" not in repr(settings.wa_keys_postgres_url)
    from_ssm = load_settings(["wa_keys_postgres_url"], environ={"WA_KEYS_POSTGRES_URL_PARAM": "/aiadmin/pg"},
                             read_parameter=lambda name: url)
    assert from_ssm.wa_keys_postgres_url == Secret(url)
    with pytest.raises(SettingsError) as error:
        load_settings(["wa_keys_postgres_url"], environ={"WA_KEYS_POSTGRES_URL": "mysql://u:hunter2@db/x"})
    assert "WA_KEYS_POSTGRES_URL" in str(error.value) and "hunter2" not in str(error.value)


@pytest.mark.parametrize("runtime", ["AWS_LAMBDA_FUNCTION_NAME", "ECS_CONTAINER_METADATA_URI_V4"])
def test_the_local_stacks_secrets_are_refused_in_aws(runtime: str) -> None:
    from aiadmin.config import LOCAL_JWT_SECRET, LOCAL_PARTNER_TOKEN

    local = {"JWT_SECRET": LOCAL_JWT_SECRET, "YCLIENTS_PARTNER_TOKEN": LOCAL_PARTNER_TOKEN}
    # On a developer's machine they are the defaults of the local stack.
    names = ["jwt_secret", "yclients_partner_token"]
    assert load_settings(names, environ=local).jwt_secret.reveal() == LOCAL_JWT_SECRET
    with pytest.raises(SettingsError) as error:
        load_settings(names, environ={**local, runtime: "x"})
    message = str(error.value)
    assert "JWT_SECRET: is the local stack's built-in test value" in message
    assert "YCLIENTS_PARTNER_TOKEN: is the local stack's built-in test value" in message
    assert LOCAL_JWT_SECRET not in message and LOCAL_PARTNER_TOKEN not in message
    # A variant of them is caught too; a real secret passes.
    with pytest.raises(SettingsError):
        load_settings(["jwt_secret"], environ={"JWT_SECRET": "my-copy-not-a-secret-0123456789abcdef", runtime: "x"})
    assert load_settings(["jwt_secret"], environ={"JWT_SECRET": "r" * 40, runtime: "x"}).jwt_secret.reveal() == "r" * 40


def test_the_local_stack_refuses_a_remote_host_without_the_flag() -> None:
    from local.stack import RemoteHostRefused, check_host

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_host(host, allow_remote=False)
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):  # noqa: S104
        with pytest.raises(RemoteHostRefused, match="--allow-remote"):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)


def test_local_frame_ancestors_are_refused_in_aws() -> None:
    from aiadmin.config import SettingsError, load_settings

    local = {"PAGE_LOCAL_FRAME_ANCESTORS": "http://127.0.0.1:* http://localhost:*"}
    assert load_settings(["page_local_frame_ancestors"], local).page_local_frame_ancestors == [
        "http://127.0.0.1:*", "http://localhost:*"]
    assert load_settings(["page_local_frame_ancestors"], {}).page_local_frame_ancestors == []
    with pytest.raises(SettingsError, match="PAGE_LOCAL_FRAME_ANCESTORS"):
        load_settings(["page_local_frame_ancestors"], {**local, "AWS_LAMBDA_FUNCTION_NAME": "f"})
    assert load_settings(["page_local_frame_ancestors"], {"AWS_LAMBDA_FUNCTION_NAME": "f"}) \
        .page_local_frame_ancestors == []
