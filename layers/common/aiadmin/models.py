"""Pydantic models at the boundaries: what the store keeps and what the page receives."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aiadmin.phones import mask_phone
from aiadmin.states import OWNER_TEXT, PageAction, SalonState, page_view

# Salon ids are positive integers; JSON and DynamoDB keep them exact below 2**53.
SALON_ID_LIMIT = 2**53
# 2**53 has 16 digits: a longer text is refused before int() reads it.
SALON_ID_MAX_CHARS = 16


def parse_salon_id(text: str) -> int | None:
    """The one reading of a salon id from text (a URL path, a query string, an ops argument);
    None when it is not one. ASCII digits only: `str.isdigit()` and `int()` also take
    superscripts (which int() then refuses with an error), fullwidth and Arabic-Indic digits,
    none of which YClients sends. Leading zeros are read away (`009203` is 9203), so callers
    that drop duplicates after parsing never see one salon twice."""
    if not (0 < len(text) <= SALON_ID_MAX_CHARS and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 0 < value < SALON_ID_LIMIT else None


class Salon(BaseModel):
    """One salon's onboarding record."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    salon_id: int
    state: SalonState
    salon_name: str = ""
    user_name: str = ""
    # The YClients user (`user_data` id) who first consented: the only one who may onboard,
    # re-link or watch the salon until YClients reports the app uninstalled and a fresh
    # consent arrives. None: not bound yet (a consent without a user id binds nobody).
    owner_user_id: str | None = None
    # The salon's current consent: every page token names the consent it was issued for, and
    # only tokens of this one may open or use a socket (`aiadmin.tokens`, `accepts_token_of`). A
    # new one ends every older token: on an uninstall, a binding to another user (or the first
    # binding) and the owner's re-link. A repeat "Подключить" by the bound owner keeps it (their
    # other tabs go on). None: recorded before consents had ids.
    consent_id: str | None = None
    # When the owner last consented in YClients (or asked to re-link WhatsApp on the page):
    # activation is tried until YClients refuses it, or for 12 hours from here at most.
    consent_at: float | None = None
    # The hour YClients' help pages give the owner; shown on the page, not a limit we enforce.
    activation_deadline: float | None = None
    # The current WhatsApp pairing string is a credential for a few seconds: it is stored so
    # a reopened page can draw it at once, and never logged.
    qr: str | None = None
    qr_expires_at: float | None = None
    # Why YClients refused the activation (status and its message), for ops; cleared on a retry.
    activation_error: str | None = None
    # The pairing code for the owner's phone number (the other way to link), valid until
    # `code_expires_at` (the end of the 160 s attempt).
    pairing_code: str | None = None
    code_expires_at: float | None = None
    # The owner's number from YClients' `user_data.phone` (digits), and the number of the WhatsApp
    # linked to the salon (from the device's JID, set by the runner when linking succeeds): the
    # page shows the latter masked and says whether the two differ.
    owner_phone: str | None = None
    linked_phone: str | None = None
    version: int = 0
    updated_at: float = 0
    updated_by: str = ""


    def accepts_token_of(self, consent_id: str | None) -> bool:
        """Whether a token of consent `consent_id` may still open or use the salon's page."""
        return self.consent_id == consent_id


SessionDesire = Literal["link", "run", "pause", "stop"]


class SessionLease(BaseModel):
    """A salon's WhatsApp session item: what the rest of the system wants from the session,
    and which runner owns it (`aiadmin.db.sessions` keeps these items).

    `desired` is the command channel from handlers to the owning runner: `link` (start a
    linking attempt; a new `generation` means a fresh attempt), `run` (keep the linked
    session connected), `pause` (frozen: keep keys, disconnect), `stop` (uninstalled: log out
    and delete keys). With `link`, `pair_phone` (international digits) asks for a pairing
    code for that number instead of a QR; `device_jid` names the linked device when the keys
    live in a shared Postgres store instead of one SQLite file per salon.

    Ownership: `owner` and `owner_epoch` name the runner membership (runner id, epoch) that
    owns the session; no owner means some runner may claim it. `activation_retry` is the
    generation of an explicit "activate again" request (a new consent, an ops retry) not yet
    taken up by the owner: only that re-activates a salon whose activation failed."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    salon_id: int
    desired: SessionDesire
    generation: int = 0
    pair_phone: str | None = None
    device_jid: str | None = None
    owner: str | None = None
    owner_epoch: int | None = None
    activation_retry: int | None = None
    # Counts commands; the owner acknowledges the one it carried out by this number.
    command_seq: int = 0
    # The index sort key (see aiadmin.db.sessions): `S#<salon id>` for an owned session with no
    # command waiting.
    session_sk: str | None = None
    # Messages in the salon's outbox not yet sent (`aiadmin.db.messages`: bounded at enqueue).
    queued: int = 0

    @property
    def command(self) -> tuple[str, int]:
        """What the rest of the system asks of this session; a change is a command."""
        return self.desired, self.generation

    @property
    def command_waiting(self) -> bool:
        """Owned, with a command its owner has not acknowledged yet."""
        return self.owner is not None and self.session_sk is not None and not self.session_sk.startswith("S#")

    @property
    def wants_activation_retry(self) -> bool:
        return self.activation_retry is not None and self.activation_retry == self.generation


class EntityWebhook(BaseModel):
    """An entity webhook from YClients (a record, a client, ... was created, updated or deleted)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    company_id: int
    resource: str = Field(min_length=1, max_length=64)
    resource_id: int | str
    status: Literal["create", "update", "delete"]
    data: dict[str, Any] | list[Any] | None = None


class LifecycleWebhook(BaseModel):
    """A lifecycle webhook from YClients (`uninstall`, `freeze`, `payment`, ...): the fields we act
    on; the others (a payment's sum and period) are kept for the event log."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    salon_id: int = Field(gt=0, lt=SALON_ID_LIMIT)
    application_id: int
    event: str = Field(min_length=1, max_length=64)
    partner_token: str

    def details(self) -> dict[str, str]:
        """The other fields (a payment's sum and period), kept as short strings for the event log."""
        extra = self.model_extra or {}
        return {str(k)[:40]: str(v)[:100] for k, v in list(extra.items())[:20] if isinstance(v, str | int | float)}


class UserData(BaseModel):
    """The owner's data YClients passes in `user_data` (every field optional, untrusted)."""

    model_config = ConfigDict(extra="ignore", defer_build=True, coerce_numbers_to_str=True)

    id: str | None = None
    user_id: str | None = None
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    salon_name: str | None = None
    is_approved: bool | None = None


class StateMessage(BaseModel):
    """What the onboarding page receives over the WebSocket."""

    # Every model here defers its validator to first use: a handler importing this module does
    # not pay for the schemas of models its request never touches (cold start).
    model_config = ConfigDict(defer_build=True)

    type: Literal["state"] = "state"
    salon_id: int
    state: SalonState
    # The salon's version: the page ignores a message older than the one it shows (pushes
    # from different senders may arrive out of order).
    version: int = 0
    title: str
    hint: str
    salon_name: str = ""
    qr: str | None = None
    qr_svg: str | None = None
    qr_expires_at: float | None = None
    pairing_code: str | None = None
    code_expires_at: float | None = None
    activation_deadline: float | None = None
    # The linked WhatsApp number, masked (`+7 900 ***-45-67`); whether it differs from the
    # owner's number in YClients (None: one of them is not known).
    linked_phone: str | None = None
    owner_number_differs: bool | None = None
    # When the salon entered this state (the status card's "since").
    state_since: float | None = None
    # What the page offers in this state (`aiadmin.states.page_view`), so the page copies no set
    # of states: the actions whose controls it shows, the step shown as current (None: no steps),
    # whether WhatsApp is linked (a walk over locations moves on), whether the owner is asked to
    # finish within YClients' hour, whether the status card shows, and whether a phone shows
    # the number form first.
    actions: list[PageAction] = Field(default_factory=list)
    step: int | None = None
    linked: bool = False
    on_the_clock: bool = False
    status_card: bool = False
    phone_form_first: bool = False
    server_time: float = Field(default=0)

    @classmethod
    def of(cls, salon: Salon, now: float, qr_svg: str | None = None) -> StateMessage:
        title, hint = OWNER_TEXT[salon.state]
        showing_qr = salon.state == SalonState.QR_READY
        showing_code = salon.state == SalonState.CODE_READY
        view = page_view(salon.state)
        return cls(
            salon_id=salon.salon_id,
            state=salon.state,
            version=salon.version,
            title=title,
            hint=hint,
            salon_name=salon.salon_name,
            qr=salon.qr if showing_qr else None,
            qr_svg=qr_svg if showing_qr else None,
            qr_expires_at=salon.qr_expires_at if showing_qr else None,
            pairing_code=salon.pairing_code if showing_code else None,
            code_expires_at=salon.code_expires_at if showing_code else None,
            activation_deadline=salon.activation_deadline,
            linked_phone=mask_phone(salon.linked_phone) if salon.linked_phone else None,
            owner_number_differs=(salon.linked_phone != salon.owner_phone
                                  if salon.linked_phone and salon.owner_phone else None),
            state_since=salon.updated_at or None,
            actions=list(view.actions),
            step=view.step,
            linked=view.linked,
            on_the_clock=view.on_the_clock,
            status_card=view.status_card,
            phone_form_first=view.phone_form_first,
            server_time=now,
        )


class TokenMessage(BaseModel):
    """A new token for the page's socket (after the owner's re-link started a new consent): the
    page keeps it for reconnecting; its old token no longer opens a socket."""

    model_config = ConfigDict(defer_build=True)

    type: Literal["token"] = "token"
    salon_id: int
    token: str


class ErrorMessage(BaseModel):
    """A request from the page that was refused (e.g. a bad phone number): nothing changed.
    `code` says why for the page's logic (`invalid_phone`, `pairing_limited`, `rate_limited`,
    `token_expired`, `token_revoked`, `bad_request`); `retry_after` (seconds) when waiting helps.
    After `token_expired` and `token_revoked` the socket is closed and gets nothing more."""

    model_config = ConfigDict(defer_build=True)

    type: Literal["error"] = "error"
    action: str
    message: str
    code: str = ""
    retry_after: float | None = None
    # The message's key in `aiadmin.i18n` and its parameters: the page shows it in the owner's
    # language (`message` is the Russian text).
    key: str = ""
    params: dict[str, int | float | str] = Field(default_factory=dict)
