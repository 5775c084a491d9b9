"""Every owner-facing text, in Russian and English: one catalogue for the server (error pages,
the redirect's refusals, socket refusals, state texts) and the onboarding page, which receives
the whole catalogue and renders state messages and refusals by key in the owner's language.

Keys are flat dotted names; parameters use `{name}` (Python `str.format`, and the page's own
substitution). Russian is the default; English is chosen by the browser's Accept-Language or
on the page. A unit test keeps both languages' keys identical and the English side free of
Cyrillic."""

from __future__ import annotations

import json
from typing import Final

DEFAULT_LANGUAGE: Final = "ru"
LANGUAGES: Final = ("ru", "en")

_CONNECT_AGAIN_RU = "Откройте YClients и нажмите «Подключить» у приложения AI Admin ещё раз."
_CONNECT_AGAIN_EN = "Open YClients and press “Connect” on the AI Admin app again."

RU: Final[dict[str, str]] = {
    # The page's fixed parts.
    "page.title_tag": "AI Admin: подключение WhatsApp",
    "page.language": "Язык",
    "page.steps": "Шаги подключения",
    "page.step1": "Откройте WhatsApp",
    "page.step2": "Отсканируйте или введите код",
    "page.step3": "Готово",
    "page.step_of": "Шаг {n} из 3",
    "page.connecting_title": "Подключаемся…",
    "page.connecting_hint": "Устанавливаем соединение с сервером.",
    "page.all_done": "Все филиалы подключены.",
    "page.locations": "Филиалы",
    "page.progress": "Подключено филиалов: {done} из {total}",
    "page.qr_alt": "QR-код для привязки WhatsApp",
    "page.qr_countdown": "Код обновится через {time}",
    "page.code_countdown": "Код действует ещё {time}",
    "page.new_code": "Получить новый код",
    "page.by_qr": "Привязать по QR-коду",
    "page.by_phone": "Привязать по номеру телефона",
    "page.other_number": "Получить код для другого номера",
    "page.phone_note": "Если эта страница открыта на том же телефоне, где WhatsApp салона, отсканировать QR-код "
                       "не получится: введите номер, и мы покажем код, который нужно ввести в WhatsApp.",
    "page.phone_label": "Номер WhatsApp салона",
    "page.phone_submit": "Получить код",
    "page.code_requested": "Запрашиваем код у WhatsApp…",
    "page.phone_title": "Привяжите WhatsApp по номеру",
    "page.relink": "Перепривязать WhatsApp",
    "page.relink_question": "Привязать этот салон к другому WhatsApp? Бот отключится от текущего WhatsApp "
                            "и заработает снова, когда вы привяжете новый.",
    "page.relink_yes": "Да, перепривязать",
    "page.relink_no": "Отмена",
    "page.link_again": "Привязать WhatsApp снова",
    "page.back": "Вернуться в YClients",
    "page.open_yclients": "Открыть YClients",
    "page.deadline_left": "Осталось времени на подключение: {time}. YClients просит завершить подключение "
                          "в течение часа.",
    "page.deadline_passed": "Час на подключение прошёл. Завершите подключение как можно скорее: мы продолжаем, "
                            "пока YClients его ждёт.",
    "page.location_id": "Филиал №{id}",
    "page.location_n": "Филиал {n}",
    "page.salon": "Салон: {name}",
    "page.no_connection": "Нет связи с сервером",
    "page.no_connection_hint": "Ссылка могла устареть. Откройте приложение из YClients ещё раз.",
    "page.link_expired": "Ссылка устарела",
    "page.link_expired_hint": _CONNECT_AGAIN_RU,
    "page.link_revoked": "Ссылка больше не действует",
    # The status card (return visits).
    "page.status": "Состояние подключения",
    "page.status_state": "Состояние",
    "page.status_number": "WhatsApp",
    "page.status_since": "С",
    "page.number_unknown": "номер не известен",
    "page.number_mismatch": "Это не тот номер, что указан в вашем профиле YClients. Если это не WhatsApp салона, "
                            "нажмите «Перепривязать WhatsApp».",
    "page.if_wrong": "Что-то не так? Если бот не отвечает клиентам или привязан не тот номер, перепривяжите "
                     "WhatsApp. Если не помогло, напишите в поддержку AI Admin из YClients.",
    # State titles and what to do (the page shows one clear next action for each).
    "state.pending_whatsapp.title": "Готовим код",
    "state.pending_whatsapp.hint": "Через несколько секунд здесь появится код для привязки WhatsApp.",
    "state.qr_ready.title": "Отсканируйте QR-код",
    "state.qr_ready.hint": "Откройте WhatsApp на телефоне салона → Настройки → Связанные устройства → "
                           "Привязка устройства и наведите камеру на код.",
    "state.qr_expired.title": "Код устарел",
    "state.qr_expired.hint": "Нажмите «Получить новый код», чтобы попробовать ещё раз. Если телефон написал, что "
                             "привязано максимальное число устройств, сначала отвяжите одно из них в WhatsApp → "
                             "Связанные устройства.",
    "state.code_ready.title": "Введите код в WhatsApp",
    "state.code_ready.hint": "На телефоне салона откройте WhatsApp → Настройки → Связанные устройства → Привязка "
                             "устройства → «Привязать по номеру телефона» и введите этот код.",
    "state.code_failed.title": "Не удалось получить код",
    "state.code_failed.hint": "WhatsApp не выдал код для этого номера. Проверьте, что это номер WhatsApp салона, "
                              "и запросите код ещё раз или привяжите WhatsApp по QR-коду.",
    "state.link_refused.title": "WhatsApp не дал привязать устройство",
    "state.link_refused.hint": "Чаще всего к номеру уже привязано максимальное число устройств. На телефоне откройте "
                               "WhatsApp → Настройки → Связанные устройства, отвяжите одно из них и нажмите "
                               "«Получить новый код».",
    "state.passkey_required.title": "WhatsApp попросил ключ доступа",
    "state.passkey_required.hint": "Наш сервер не может подтвердить привязку ключом доступа (passkey). На телефоне "
                                   "выберите привязку без ключа доступа, если WhatsApp это предлагает, или удалите "
                                   "ключ доступа в WhatsApp → Настройки → Аккаунт → Ключи доступа. Затем нажмите "
                                   "«Получить новый код».",
    "state.pairing.title": "Связываем WhatsApp",
    "state.pairing.hint": "Телефон принял код, завершаем привязку.",
    "state.whatsapp_connected.title": "WhatsApp подключён",
    "state.whatsapp_connected.hint": "Включаем интеграцию в YClients.",
    "state.activating.title": "Включаем интеграцию",
    "state.activating.hint": "Сообщаем YClients, что всё готово.",
    "state.active.title": "Готово! AI Admin подключён",
    "state.active.hint": "Приложение активно. Можно вернуться в YClients.",
    "state.activation_failed.title": "Не удалось включить интеграцию",
    "state.activation_failed.hint": "YClients не принял подключение, мы уже разбираемся. Чтобы попробовать снова, "
                                    "откройте YClients и нажмите «Подключить» у приложения ещё раз.",
    "state.frozen.title": "Приложение приостановлено",
    "state.frozen.hint": "Оплатите подписку в YClients, и бот снова заработает.",
    "state.uninstalled.title": "Приложение отключено",
    "state.uninstalled.hint": "Чтобы подключить снова, откройте YClients и нажмите «Подключить».",
    "state.whatsapp_logged_out.title": "WhatsApp отвязан",
    "state.whatsapp_logged_out.hint": "Устройство отвязали в телефоне, бот не отвечает клиентам. Нажмите "
                                      "«Привязать WhatsApp снова».",
    "state.banned.title": "WhatsApp временно заблокировал номер",
    "state.banned.hint": "Дождитесь, когда WhatsApp снимет блокировку, и нажмите «Привязать WhatsApp снова».",
    "state.client_outdated.title": "Нужно обновление",
    "state.client_outdated.hint": "Мы обновляем подключение к WhatsApp, ничего делать не нужно. Можно вернуться "
                                  "в YClients.",
    "state.expired_consent.title": "Время на подключение истекло",
    "state.expired_consent.hint": "YClients больше не ждёт подключения. Откройте YClients и нажмите «Подключить» "
                                  "ещё раз: уже привязанный WhatsApp останется привязанным.",
    # The redirect's refusals (error pages).
    "error.footer": _CONNECT_AGAIN_RU,
    "error.no_salon.title": "Не указан салон",
    "error.no_salon.message": "В ссылке из YClients нет номера салона.",
    "error.too_many.title": "Слишком много филиалов",
    "error.too_many.message": "За один раз можно подключить не больше {max} филиалов. Выберите в YClients часть "
                              "филиалов, подключите их, затем остальные.",
    "error.bad_salon.title": "Неверный номер салона",
    "error.bad_salon.message": "Ссылка из YClients повреждена.",
    "error.unsigned.title": "Ссылка без подписи",
    "error.unsigned.message": "Ссылка не подписана YClients, мы не можем ей доверять.",
    "error.bad_sign.title": "Ссылка недействительна",
    "error.bad_sign.message": "Подпись YClients не сходится.",
    "error.bad_user_data.title": "Ссылка повреждена",
    "error.bad_user_data.message": "Данные владельца в ссылке из YClients не читаются.",
    "error.refused.title": "Салон подключает другой пользователь",
    "error.refused.message": "Этот салон уже подключён к AI Admin другим пользователем YClients. Подключить его "
                             "заново может только он. Если это ошибка, напишите в поддержку AI Admin.",
    "error.yclients_down.title": "YClients не отвечает",
    "error.yclients_down.message": "Не получилось проверить подключение в YClients. Попробуйте ещё раз через минуту.",
    "error.not_installed.title": "Приложение не подключено",
    "error.not_installed.message": "YClients не подтверждает, что этот салон подключает AI Admin.",
    "error.not_installed.location": "YClients не подтверждает, что филиал №{salon_id} подключает AI Admin.",
    "error.unexpected.title": "Временная ошибка",
    "error.unexpected.message": "Что-то пошло не так на нашей стороне. Попробуйте через минуту.",
    # Refusals of the page's requests over the WebSocket.
    "socket.rate_limited": "Слишком много запросов со страницы. Подождите несколько секунд и попробуйте снова.",
    "socket.token_expired": "Ссылка устарела. Откройте YClients и нажмите «Подключить» у приложения AI Admin "
                            "ещё раз, чтобы продолжить.",
    "socket.bad_request": "Страница отправила непонятный запрос. Обновите страницу.",
    "socket.token_revoked": "Эта ссылка больше не действует: приложение отключили в YClients или WhatsApp салона "
                            "привязали заново. " + _CONNECT_AGAIN_RU,
    "phone.empty": "Введите номер телефона, к которому привязан WhatsApp салона.",
    "phone.too_long": "Слишком длинный номер. Введите номер в формате +7 900 123-45-67.",
    "phone.not_a_number": "Это не похоже на номер телефона. Введите номер в формате +7 900 123-45-67.",
    "phone.invalid": "Такого номера не существует. Проверьте цифры и код страны, например +7 900 123-45-67.",
    "pairing.interval": "Новый код можно запросить через {seconds} с.",
    "pairing.hourly": "За последний час коды уже запрошены для {count} разных номеров. Попробуйте снова через "
                      "{minutes} мин или привяжите WhatsApp по QR-коду.",
}

EN: Final[dict[str, str]] = {
    "page.title_tag": "AI Admin: connect WhatsApp",
    "page.language": "Language",
    "page.steps": "Connection steps",
    "page.step1": "Open WhatsApp",
    "page.step2": "Scan or enter the code",
    "page.step3": "Done",
    "page.step_of": "Step {n} of 3",
    "page.connecting_title": "Connecting…",
    "page.connecting_hint": "Connecting to the server.",
    "page.all_done": "All locations are connected.",
    "page.locations": "Locations",
    "page.progress": "Locations connected: {done} of {total}",
    "page.qr_alt": "QR code to link WhatsApp",
    "page.qr_countdown": "The code refreshes in {time}",
    "page.code_countdown": "The code is valid for {time}",
    "page.new_code": "Get a new code",
    "page.by_qr": "Link with a QR code",
    "page.by_phone": "Link with a phone number",
    "page.other_number": "Get a code for another number",
    "page.phone_note": "If this page is open on the phone that runs the salon's WhatsApp, you cannot scan the QR "
                       "code: enter the number and we will show a code to type into WhatsApp.",
    "page.phone_label": "The salon's WhatsApp number",
    "page.phone_submit": "Get the code",
    "page.code_requested": "Asking WhatsApp for a code…",
    "page.phone_title": "Link WhatsApp by phone number",
    "page.relink": "Re-link WhatsApp",
    "page.relink_question": "Link this salon to another WhatsApp? The bot disconnects from the current WhatsApp "
                            "and works again once you link the new one.",
    "page.relink_yes": "Yes, re-link",
    "page.relink_no": "Cancel",
    "page.link_again": "Link WhatsApp again",
    "page.back": "Back to YClients",
    "page.open_yclients": "Open YClients",
    "page.deadline_left": "Time left to connect: {time}. YClients asks you to finish within an hour.",
    "page.deadline_passed": "The hour to connect has passed. Finish as soon as you can: we keep going while "
                            "YClients waits.",
    "page.location_id": "Location #{id}",
    "page.location_n": "Location {n}",
    "page.salon": "Salon: {name}",
    "page.no_connection": "No connection to the server",
    "page.no_connection_hint": "The link may have expired. Open the app from YClients again.",
    "page.link_expired": "The link has expired",
    "page.link_expired_hint": _CONNECT_AGAIN_EN,
    "page.link_revoked": "This link no longer works",
    "page.status": "Connection status",
    "page.status_state": "Status",
    "page.status_number": "WhatsApp",
    "page.status_since": "Since",
    "page.number_unknown": "number not known",
    "page.number_mismatch": "This is not the number in your YClients profile. If it is not the salon's WhatsApp, "
                            "press “Re-link WhatsApp”.",
    "page.if_wrong": "Something wrong? If the bot does not answer clients or the wrong number is linked, re-link "
                     "WhatsApp. If that does not help, contact AI Admin support from YClients.",
    "state.pending_whatsapp.title": "Preparing the code",
    "state.pending_whatsapp.hint": "In a few seconds a code to link WhatsApp appears here.",
    "state.qr_ready.title": "Scan the QR code",
    "state.qr_ready.hint": "Open WhatsApp on the salon's phone → Settings → Linked devices → Link a device, and "
                           "point the camera at the code.",
    "state.qr_expired.title": "The code has expired",
    "state.qr_expired.hint": "Press “Get a new code” to try again. If the phone said the maximum number of devices "
                             "is linked, first unlink one of them in WhatsApp → Linked devices.",
    "state.code_ready.title": "Enter the code in WhatsApp",
    "state.code_ready.hint": "On the salon's phone open WhatsApp → Settings → Linked devices → Link a device → "
                             "“Link with phone number instead” and enter this code.",
    "state.code_failed.title": "Could not get a code",
    "state.code_failed.hint": "WhatsApp gave no code for this number. Check that it is the salon's WhatsApp number "
                              "and ask for a code again, or link WhatsApp with the QR code.",
    "state.link_refused.title": "WhatsApp refused to link the device",
    "state.link_refused.hint": "Most often the number already has the maximum of linked devices. On the phone open "
                               "WhatsApp → Settings → Linked devices, unlink one of them and press "
                               "“Get a new code”.",
    "state.passkey_required.title": "WhatsApp asked for a passkey",
    "state.passkey_required.hint": "Our server cannot confirm the link with a passkey. On the phone choose linking "
                                   "without a passkey if WhatsApp offers it, or remove the passkey in WhatsApp → "
                                   "Settings → Account → Passkeys. Then press “Get a new code”.",
    "state.pairing.title": "Linking WhatsApp",
    "state.pairing.hint": "The phone accepted the code; finishing the link.",
    "state.whatsapp_connected.title": "WhatsApp is connected",
    "state.whatsapp_connected.hint": "Turning the integration on in YClients.",
    "state.activating.title": "Turning the integration on",
    "state.activating.hint": "Telling YClients that everything is ready.",
    "state.active.title": "Done! AI Admin is connected",
    "state.active.hint": "The app is active. You can go back to YClients.",
    "state.activation_failed.title": "Could not turn the integration on",
    "state.activation_failed.hint": "YClients did not accept the connection; we are looking into it. To try again, "
                                    "open YClients and press “Connect” on the app again.",
    "state.frozen.title": "The app is paused",
    "state.frozen.hint": "Pay for the subscription in YClients and the bot works again.",
    "state.uninstalled.title": "The app is disconnected",
    "state.uninstalled.hint": "To connect it again, open YClients and press “Connect”.",
    "state.whatsapp_logged_out.title": "WhatsApp was unlinked",
    "state.whatsapp_logged_out.hint": "The device was unlinked on the phone, so the bot does not answer clients. "
                                      "Press “Link WhatsApp again”.",
    "state.banned.title": "WhatsApp has temporarily blocked the number",
    "state.banned.hint": "Wait until WhatsApp lifts the block, then press “Link WhatsApp again”.",
    "state.client_outdated.title": "An update is needed",
    "state.client_outdated.hint": "We are updating our connection to WhatsApp; you need to do nothing. You can go "
                                  "back to YClients.",
    "state.expired_consent.title": "The time to connect has run out",
    "state.expired_consent.hint": "YClients no longer waits for the connection. Open YClients and press “Connect” "
                                  "again: a WhatsApp already linked stays linked.",
    "error.footer": _CONNECT_AGAIN_EN,
    "error.no_salon.title": "No salon given",
    "error.no_salon.message": "The link from YClients has no salon number.",
    "error.too_many.title": "Too many locations",
    "error.too_many.message": "You can connect at most {max} locations at once. Choose some of them in YClients, "
                              "connect them, then the rest.",
    "error.bad_salon.title": "Wrong salon number",
    "error.bad_salon.message": "The link from YClients is damaged.",
    "error.unsigned.title": "Unsigned link",
    "error.unsigned.message": "YClients did not sign the link, so we cannot trust it.",
    "error.bad_sign.title": "Invalid link",
    "error.bad_sign.message": "The YClients signature does not match.",
    "error.bad_user_data.title": "Damaged link",
    "error.bad_user_data.message": "The owner's details in the link from YClients cannot be read.",
    "error.refused.title": "Another user is connecting this salon",
    "error.refused.message": "Another YClients user has already connected this salon to AI Admin. Only they can "
                             "connect it again. If this is a mistake, write to AI Admin support.",
    "error.yclients_down.title": "YClients is not answering",
    "error.yclients_down.message": "We could not check the connection in YClients. Try again in a minute.",
    "error.not_installed.title": "The app is not connected",
    "error.not_installed.message": "YClients does not confirm that this salon is connecting AI Admin.",
    "error.not_installed.location": "YClients does not confirm that location #{salon_id} is connecting AI Admin.",
    "error.unexpected.title": "Temporary error",
    "error.unexpected.message": "Something went wrong on our side. Try again in a minute.",
    "socket.rate_limited": "Too many requests from the page. Wait a few seconds and try again.",
    "socket.token_expired": "The link has expired. Open YClients and press “Connect” on the AI Admin app again "
                            "to continue.",
    "socket.bad_request": "The page sent a request we did not understand. Reload the page.",
    "socket.token_revoked": "This link no longer works: the app was disconnected in YClients, or the salon's "
                            "WhatsApp was linked again. " + _CONNECT_AGAIN_EN,
    "phone.empty": "Enter the phone number the salon's WhatsApp runs on.",
    "phone.too_long": "The number is too long. Enter it as +7 900 123-45-67.",
    "phone.not_a_number": "This does not look like a phone number. Enter it as +7 900 123-45-67.",
    "phone.invalid": "No such number exists. Check the digits and the country code, e.g. +7 900 123-45-67.",
    "pairing.interval": "You can ask for a new code in {seconds} s.",
    "pairing.hourly": "In the last hour codes were already requested for {count} different numbers. Try again in "
                      "{minutes} min or link WhatsApp with the QR code.",
}

CATALOGUE: Final[dict[str, dict[str, str]]] = {"ru": RU, "en": EN}


def t(language: str, key: str, **params: object) -> str:
    """The text for `key` in `language` (Russian for any other language)."""
    texts = CATALOGUE.get(language, RU)
    return texts[key].format(**params) if params else texts[key]


def pick_language(accept_language: str | None) -> str:
    """The owner's language from an Accept-Language header: the supported language with the
    highest weight; Russian when none is supported or the header is missing or malformed."""
    best, best_q = DEFAULT_LANGUAGE, -1.0
    for index, part in enumerate((accept_language or "")[:500].split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        language = tag.strip().lower().split("-")[0]
        if language not in LANGUAGES:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        # Equal weights: the first listed wins.
        if q > best_q and q > 0:
            best, best_q = language, q - index * 1e-6
    return best


def catalogue_json() -> str:
    """Both languages for the page, safe inside a <script> element."""
    return json.dumps(CATALOGUE, ensure_ascii=False).replace("</", "<\\/")
