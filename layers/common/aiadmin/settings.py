"""What each Lambda function reads from its environment, one settings class per function (the
runner's are in `wa_runner.__main__`, ops' with their commands). The settings themselves (each
variable's name, default and check) are defined once, in `aiadmin.config`.

Handlers build theirs on first use (`load()`, in a cached factory), not at import: pydantic-settings
is left out of the cold start, and the redirect function builds it before its SnapStart snapshot.
"""

from __future__ import annotations

from aiadmin.config import (
    CheckSalonUsers,
    ComponentSettings,
    EntityQueueUrl,
    InboundQueueUrl,
    JwtSecret,
    LocalFrameAncestors,
    MessagesApiKey,
    MessagesFirstContactPerMinute,
    MessagesOutboxMax,
    MessagesPerMinute,
    MessagesReplyBurst,
    MessagesReplyPerSecond,
    PairingMinIntervalSeconds,
    PartnerToken,
    SigningKey,
    TableName,
    TokenTtlSeconds,
    WebSocketManagementUrl,
    WebSocketUrl,
    YClientsAppId,
    YClientsAppUrl,
    YClientsBaseUrl,
)


class RedirectSettings(ComponentSettings):
    """functions/redirect: the consent redirect and the onboarding page."""

    table_name: TableName
    yclients_base_url: YClientsBaseUrl
    yclients_app_id: YClientsAppId
    yclients_partner_token: PartnerToken
    yclients_signing_key: SigningKey
    yclients_check_salon_users: CheckSalonUsers
    jwt_secret: JwtSecret
    websocket_url: WebSocketUrl
    token_ttl_seconds: TokenTtlSeconds
    yclients_app_url: YClientsAppUrl
    page_local_frame_ancestors: LocalFrameAncestors


class CallbackSettings(ComponentSettings):
    """functions/callback: YClients' webhooks and the health check."""

    table_name: TableName
    yclients_partner_token: PartnerToken
    yclients_app_id: YClientsAppId
    entity_queue_url: EntityQueueUrl


class SocketConnectSettings(ComponentSettings):
    """functions/ws_connect: the page socket's $connect and $disconnect."""

    table_name: TableName
    jwt_secret: JwtSecret


class SocketMessageSettings(ComponentSettings):
    """functions/ws_message: the page socket's $default route (its messages)."""

    table_name: TableName
    websocket_management_url: WebSocketManagementUrl
    pairing_min_interval_seconds: PairingMinIntervalSeconds
    # A re-link starts a new consent: the asking page gets a new token.
    jwt_secret: JwtSecret
    token_ttl_seconds: TokenTtlSeconds


class StateStreamSettings(ComponentSettings):
    """functions/state_stream: pushes state changes made outside the runner (no secret)."""

    table_name: TableName
    websocket_management_url: WebSocketManagementUrl


class MessagesSettings(ComponentSettings):
    """functions/messages: AI Admin's messages API (IAM auth in AWS: no secret here)."""

    table_name: TableName
    messages_outbox_max: MessagesOutboxMax
    # Read only so that a local key set in AWS fails the function's first request (in AWS the
    # routes take IAM auth; the local stack's gateway checks the key, never the handler).
    messages_api_key: MessagesApiKey


class RunnerMessagesSettings(ComponentSettings):
    """What the runner reads for messages (its `RunnerSettings`, in `wa_runner.__main__`, takes
    these fields): where inbound messages go, and the pace of sending (README "Messages")."""

    inbound_queue_url: InboundQueueUrl
    messages_reply_per_second: MessagesReplyPerSecond
    messages_reply_burst: MessagesReplyBurst
    messages_first_contact_per_minute: MessagesFirstContactPerMinute
    messages_per_minute: MessagesPerMinute
