"""The quota ledger's rules, on their own: what each customer action earns, how sends spend it, what a refusal says."""

from __future__ import annotations

from core.allowance import EVENT_WINDOW_S, MESSAGE_WINDOW_S, Allowance

T = 1_800_000_000.0


def test_a_kf_message_earns_five_for_48_hours_and_a_new_message_starts_a_new_count() -> None:
    allowance = Allowance("kf").earned("message", T)
    assert allowance.left(T) == 5
    spent = allowance.spent(5, T + 1)
    assert spent.left(T + 2) == 0
    assert spent.earned("message", T + 10).left(T + 11) == 5
    assert allowance.left(T + MESSAGE_WINDOW_S) == 0  # the window closed


def test_a_kf_enter_session_earns_nothing_and_a_rep_session_allows_nothing() -> None:
    assert Allowance("kf").earned("enter_session", T).left(T) == 0
    served = Allowance("kf").earned("message", T).in_session(3)
    assert served.left(T) == 0
    assert served.earned("message", T + 5).left(T + 5) == 0  # writing to a rep's session does not give it back
    ended = served.in_session(4).earned("message", T + 9)  # the customer's next message opens a new session
    assert ended.session == 0 and ended.left(T + 9) == 5


def test_oa_events_earn_three_for_a_minute_spent_before_the_message_grant() -> None:
    allowance = Allowance("oa").earned("message", T).earned("menu_click", T + 10)
    assert allowance.left(T + 10) == 8
    spent = allowance.spent(4, T + 11)
    assert spent.event is not None and spent.event.used == 3
    assert spent.message is not None and spent.message.used == 1
    assert spent.left(T + 10 + EVENT_WINDOW_S) == 4  # the click's minute is over
    assert Allowance("oa").earned("subscribe", T).spent(3, T).left(T) == 0
    assert Allowance("oa").earned("unsubscribe", T).left(T) == 0


def test_a_refusal_corrects_the_ledger() -> None:
    allowance = Allowance("kf").earned("message", T)
    assert allowance.refused(95001, T).left(T) == 0  # count used (by another system, say)
    assert allowance.refused(95002, T + 5).left(T + 6) == 0  # window closed
    assert allowance.refused(95018, T).session == 4
    assert allowance.refused(40003, T) == allowance  # not about quota: nothing learnt


def test_resets_at_is_when_what_is_left_runs_out() -> None:
    allowance = Allowance("oa").earned("message", T).earned("scan", T + 1)
    assert allowance.resets_at(T + 2) == T + 1 + EVENT_WINDOW_S
    assert Allowance("oa").resets_at(T) is None
