"""The salon state machine: one table of allowed transitions, and the owner-facing texts.

Every state change in the system goes through `check_transition`; an illegal one raises
`IllegalTransition` and is logged by the caller, never silently applied.
"""

from __future__ import annotations

from enum import StrEnum


class SalonState(StrEnum):
    PENDING_WHATSAPP = "pending_whatsapp"
    QR_READY = "qr_ready"
    QR_EXPIRED = "qr_expired"
    PAIRING = "pairing"
    WHATSAPP_CONNECTED = "whatsapp_connected"
    ACTIVATING = "activating"
    ACTIVE = "active"
    ACTIVATION_FAILED = "activation_failed"
    FROZEN = "frozen"
    UNINSTALLED = "uninstalled"
    WHATSAPP_LOGGED_OUT = "whatsapp_logged_out"
    BANNED = "banned"
    CLIENT_OUTDATED = "client_outdated"
    EXPIRED_CONSENT = "expired_consent"


S = SalonState

# Ends of a linked session, reported by the engine; reachable from any linked state.
_SESSION_ENDS = {S.WHATSAPP_LOGGED_OUT, S.BANNED, S.CLIENT_OUTDATED}
# YClients can uninstall or freeze the app at any moment.
_LIFECYCLE = {S.UNINSTALLED, S.FROZEN}

ALLOWED_TRANSITIONS: dict[SalonState | None, frozenset[SalonState]] = {
    None: frozenset({S.PENDING_WHATSAPP}),
    S.PENDING_WHATSAPP: frozenset({S.QR_READY, S.PAIRING, S.EXPIRED_CONSENT} | _LIFECYCLE),
    # qr_ready -> qr_ready: the next code of the same attempt.
    S.QR_READY: frozenset({S.QR_READY, S.QR_EXPIRED, S.PAIRING, S.EXPIRED_CONSENT} | _LIFECYCLE),
    S.QR_EXPIRED: frozenset({S.PENDING_WHATSAPP, S.QR_READY, S.EXPIRED_CONSENT} | _LIFECYCLE),
    S.PAIRING: frozenset({S.WHATSAPP_CONNECTED, S.QR_EXPIRED, S.PENDING_WHATSAPP} | _SESSION_ENDS | _LIFECYCLE),
    S.WHATSAPP_CONNECTED: frozenset({S.ACTIVATING, S.EXPIRED_CONSENT} | _SESSION_ENDS | _LIFECYCLE),
    S.ACTIVATING: frozenset({S.ACTIVE, S.ACTIVATION_FAILED, S.EXPIRED_CONSENT} | _SESSION_ENDS | _LIFECYCLE),
    S.ACTIVATION_FAILED: frozenset({S.ACTIVATING, S.PENDING_WHATSAPP} | _SESSION_ENDS | _LIFECYCLE),
    S.ACTIVE: frozenset(_SESSION_ENDS | _LIFECYCLE),
    # Unfrozen by a payment or a new activation; a new consent starts linking again.
    S.FROZEN: frozenset({S.ACTIVE, S.ACTIVATING, S.PENDING_WHATSAPP, S.UNINSTALLED}),
    S.UNINSTALLED: frozenset({S.PENDING_WHATSAPP}),
    S.WHATSAPP_LOGGED_OUT: frozenset({S.PENDING_WHATSAPP} | _LIFECYCLE),
    S.BANNED: frozenset({S.PENDING_WHATSAPP} | _LIFECYCLE),
    # After a library update the same keys connect again.
    S.CLIENT_OUTDATED: frozenset({S.PENDING_WHATSAPP, S.WHATSAPP_CONNECTED} | _LIFECYCLE),
    S.EXPIRED_CONSENT: frozenset({S.PENDING_WHATSAPP, S.UNINSTALLED}),
}

# States in which a linking attempt is under way: a repeat visit joins it instead of
# starting another.
LINKING_STATES = frozenset({S.PENDING_WHATSAPP, S.QR_READY, S.PAIRING})
# States in which WhatsApp is linked: a repeat visit only shows the state.
LINKED_STATES = frozenset({S.WHATSAPP_CONNECTED, S.ACTIVATING, S.ACTIVE, S.ACTIVATION_FAILED, S.FROZEN})


class IllegalTransition(ValueError):
    def __init__(self, current: SalonState | None, new: SalonState) -> None:
        super().__init__(f"illegal transition {current or 'new'} -> {new}")
        self.current = current
        self.new = new


def check_transition(current: SalonState | None, new: SalonState) -> None:
    if new not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(current, new)


def is_allowed(current: SalonState | None, new: SalonState) -> bool:
    return new in ALLOWED_TRANSITIONS[current]


# What the owner reads on the onboarding page for each state: a title and what to do.
OWNER_TEXT: dict[SalonState, tuple[str, str]] = {
    S.PENDING_WHATSAPP: ("Готовим QR-код", "Через несколько секунд здесь появится QR-код для WhatsApp."),
    S.QR_READY: (
        "Отсканируйте QR-код",
        "Откройте WhatsApp на телефоне салона → Настройки → Связанные устройства → "
        "Привязка устройства и наведите камеру на код.",
    ),
    S.QR_EXPIRED: ("QR-код устарел", "Нажмите «Получить новый код», чтобы попробовать ещё раз."),
    S.PAIRING: ("Связываем WhatsApp", "Телефон отсканировал код, завершаем привязку."),
    S.WHATSAPP_CONNECTED: ("WhatsApp подключён", "Включаем интеграцию в YClients."),
    S.ACTIVATING: ("Включаем интеграцию", "Сообщаем YClients, что всё готово."),
    S.ACTIVE: ("Готово! AI Admin подключён", "Можно вернуться в YClients: приложение активно."),
    S.ACTIVATION_FAILED: (
        "Не удалось включить интеграцию",
        "YClients не принял подключение, мы уже разбираемся. Чтобы попробовать снова, "
        "нажмите «Подключить» у приложения в YClients ещё раз.",
    ),
    S.FROZEN: ("Приложение приостановлено", "Оплатите подписку в YClients, и бот снова заработает."),
    S.UNINSTALLED: ("Приложение отключено", "Чтобы подключить снова, нажмите «Подключить» в YClients."),
    S.WHATSAPP_LOGGED_OUT: (
        "WhatsApp отвязан",
        "Устройство отвязали в телефоне. Откройте приложение из YClients, чтобы привязать снова.",
    ),
    S.BANNED: ("WhatsApp временно заблокировал номер", "Подождите снятия блокировки и привяжите номер снова."),
    S.CLIENT_OUTDATED: ("Нужно обновление", "Мы обновляем подключение к WhatsApp, ничего делать не нужно."),
    S.EXPIRED_CONSENT: (
        "Время на подключение истекло",
        "Прошло больше часа. Откройте YClients и нажмите «Подключить» ещё раз.",
    ),
}
