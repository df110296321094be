from __future__ import annotations

from balancer.health import OutlierDetector
from balancer.ledger import PendingLedger
from tests.conftest import view


def test_reserved_kw_is_pending_at_once_and_released_on_failure() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 11.0)
    assert ledger.pending_kw("a") == 11.0
    ledger.release("a", "s1")
    assert ledger.pending_kw("a") == 0.0


def test_repeat_reservation_of_one_session_counts_once() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 11.0)
    ledger.reserve("a", "s1", 11.0)
    assert ledger.pending_kw("a") == 11.0


def test_settle_drops_only_what_a_later_scrape_has_counted() -> None:
    ledger = PendingLedger(clock_skew_s=0.5)
    for sid, confirmed in (("old", 100.0), ("edge", 100.8), ("new", 101.5)):
        ledger.reserve("a", sid, 10.0)
        ledger.confirm("a", sid, now=confirmed)
    ledger.reserve("a", "in-flight", 5.0)
    ledger.settle("a", scrape_ts=101.0)
    # "old" was confirmed before the scrape (minus skew); "edge" is within the skew margin.
    assert ledger.pending_kw("a") == 25.0
    ledger.settle("a", scrape_ts=110.0)
    assert ledger.pending_kw("a") == 5.0   # in flight: no scrape can have counted it yet


def test_an_observed_load_absorbs_what_was_confirmed_before_it() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "before", 10.0)
    ledger.confirm("a", "before", now=100.0)
    ledger.reserve("a", "in-flight", 5.0)
    ledger.observe("a", 42.0, at=100.5)
    assert ledger.observed_load_kw("a") == 42.0
    assert ledger.pending_kw("a") == 5.0
    ledger.settle("a", scrape_ts=100.9)         # within the skew margin: the report stays
    assert ledger.observed_load_kw("a") == 42.0
    ledger.settle("a", scrape_ts=102.0)
    assert ledger.observed_load_kw("a") is None


def test_books_of_substations_that_left_are_forgotten() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 1.0)
    ledger.reserve("b", "s2", 1.0)
    ledger.forget_except({"b"})
    assert ledger.snapshot() == {"b": 1.0}


def test_ejected_after_consecutive_failures_only() -> None:
    health = OutlierDetector(consecutive_failures=2)
    assert health.record_failure("a", now=0.0, total_substations=4) is False
    health.record_success("a")
    assert health.record_failure("a", now=1.0, total_substations=4) is False
    assert health.record_failure("a", now=2.0, total_substations=4) is True
    assert health.is_ejected("a", now=3.0, scrape_ts=2.5, up=True)


def test_readmitted_only_after_backoff_and_a_newer_scrape_showing_it_up() -> None:
    health = OutlierDetector(consecutive_failures=1, base_ejection_s=5.0)
    health.record_failure("a", now=100.0, total_substations=4)
    assert health.is_ejected("a", now=106.0, scrape_ts=99.0, up=True)    # scrape too old
    assert health.is_ejected("a", now=106.0, scrape_ts=105.0, up=False)   # still down
    assert health.is_ejected("a", now=103.0, scrape_ts=102.0, up=True)    # backoff running
    assert not health.is_ejected("a", now=106.0, scrape_ts=105.0, up=True)


def test_backoff_grows_with_each_ejection_up_to_the_cap() -> None:
    health = OutlierDetector(consecutive_failures=1, base_ejection_s=5.0, max_ejection_s=12.0)
    health.record_failure("a", now=0.0, total_substations=4)
    assert not health.is_ejected("a", now=5.0, scrape_ts=4.0, up=True)
    health.record_failure("a", now=10.0, total_substations=4)   # second ejection: 10 s
    assert health.is_ejected("a", now=19.0, scrape_ts=18.0, up=True)
    assert not health.is_ejected("a", now=20.0, scrape_ts=19.0, up=True)
    health.record_failure("a", now=30.0, total_substations=4)   # third: 15 s, capped at 12
    assert not health.is_ejected("a", now=42.0, scrape_ts=41.0, up=True)


def test_never_ejects_more_than_the_allowed_fraction() -> None:
    health = OutlierDetector(consecutive_failures=1, max_ejected_fraction=0.5)
    assert health.record_failure("a", now=0.0, total_substations=2) is True
    assert health.record_failure("b", now=0.0, total_substations=2) is False
    assert health.ejected() == ["a"]


def test_ejected_now_lists_only_substations_still_ejected() -> None:
    health = OutlierDetector(consecutive_failures=1, base_ejection_s=5.0)
    health.record_failure("a", now=100.0, total_substations=4)
    health.record_failure("b", now=100.0, total_substations=4)
    views = {"a": view("a", 0.0, 10.0, scrape_ts=106.0),
             "b": view("b", 0.0, 10.0, scrape_ts=106.0, up=False)}
    assert health.ejected_now(110.0, views) == {"b"}


def test_an_older_answer_arriving_last_does_not_replace_a_newer_reading() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 11.0)
    ledger.reserve("a", "s2", 11.0)
    ledger.confirm("a", "s1", now=1.0, seq=101)
    ledger.confirm("a", "s2", now=1.0, seq=102)
    # The accept of s2 (seq 102, load 22) arrives before the accept of s1 (seq 101, load 11).
    assert ledger.observe("a", 22.0, at=1.1, seq=102)
    assert not ledger.observe("a", 11.0, at=1.2, seq=101)
    assert ledger.observed_load_kw("a") == 22.0 and ledger.pending_kw("a") == 0.0


def test_a_reading_drops_only_the_accepts_it_includes() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 11.0)
    ledger.reserve("a", "s2", 7.0)
    ledger.confirm("a", "s1", now=1.0, seq=101)
    ledger.confirm("a", "s2", now=1.0, seq=103)
    # A refusal answered at seq 102: it includes s1, not s2, whatever our clock says.
    ledger.observe("a", 11.0, at=5.0, seq=102)
    assert ledger.pending_kw("a") == 7.0 and ledger.observed_load_kw("a") == 11.0


def test_each_newer_report_replaces_the_last_one_kept() -> None:
    ledger = PendingLedger()
    ledger.observe("a", 42.0, at=100.0)
    ledger.observe("a", 30.0, at=101.0)             # sessions ended: the load went down
    assert ledger.observed_load_kw("a") == 30.0
    ledger.observe("a", 35.0, at=102.0, seq=7)
    ledger.observe("a", 36.0, at=103.0, seq=8)
    assert ledger.observed_load_kw("a") == 36.0


def test_a_report_is_kept_until_a_scrape_newer_than_its_own_time() -> None:
    # The report's time decides: a scrape from before the report must not replace it.
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.observe("a", 42.0, at=100.0)
    ledger.settle("a", scrape_ts=90.0)
    assert ledger.observed_load_kw("a") == 42.0
    ledger.observe("a", 43.0, at=200.0)
    ledger.settle("a", scrape_ts=150.0)             # newer than the first report, not the second
    assert ledger.observed_load_kw("a") == 43.0
    ledger.settle("a", scrape_ts=200.0)
    assert ledger.observed_load_kw("a") is None


def test_releasing_one_of_several_keeps_the_others_exactly() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 11.0)
    ledger.reserve("a", "s2", 0.5)
    ledger.release("a", "s1")
    assert ledger.pending_kw("a") == 0.5
    ledger.release("a", "s2")
    ledger.reserve("a", "s3", 7.0)              # an emptied book starts again from zero
    assert ledger.pending_kw("a") == 7.0


def test_unknown_instances_and_sessions_are_ignored() -> None:
    ledger = PendingLedger()
    ledger.confirm("nowhere", "s1", now=1.0)
    ledger.release("nowhere", "s1")
    ledger.reserve("a", "s1", 5.0)
    ledger.release("a", "not-reserved")
    ledger.confirm("a", "not-reserved", now=1.0)
    assert ledger.pending_kw("a") == 5.0 and ledger.pending_kw("nowhere") == 0.0
    ledger.release("a", "s1")
    ledger.settle("a", scrape_ts=10.0)          # an emptied book is settled and observed
    ledger.observe("a", 1.0, at=11.0)
    ledger.forget_except(set())                 # a book with nothing pending is dropped too
    assert ledger.snapshot() == {}


def test_a_repeat_of_the_kept_reading_changes_nothing() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    assert ledger.observe("a", 22.0, at=10.0, seq=5)
    assert not ledger.observe("a", 22.0, at=20.0, seq=5)
    ledger.settle("a", scrape_ts=15.0)          # newer than the reading's first arrival
    assert ledger.observed_load_kw("a") is None


def test_a_reading_without_a_sequence_resets_the_order() -> None:
    # A substation that does not number its readings (or restarted without): the next
    # numbered one counts whatever its number.
    ledger = PendingLedger()
    ledger.observe("a", 10.0, at=1.0, seq=100)
    ledger.observe("a", 20.0, at=2.0)
    assert ledger.observe("a", 30.0, at=3.0, seq=7)
    assert ledger.observed_load_kw("a") == 30.0


def test_an_entry_confirmed_exactly_at_the_horizon_is_counted_by_the_scrape() -> None:
    ledger = PendingLedger(clock_skew_s=0.5)
    ledger.reserve("a", "s1", 10.0)
    ledger.confirm("a", "s1", now=100.0)
    ledger.settle("a", scrape_ts=100.5)
    assert ledger.pending_kw("a") == 0.0


def test_the_default_skew_margin_is_half_a_second() -> None:
    ledger = PendingLedger()
    ledger.reserve("a", "s1", 10.0)
    ledger.confirm("a", "s1", now=100.0)
    ledger.settle("a", scrape_ts=100.4)
    assert ledger.pending_kw("a") == 10.0
    ledger.settle("a", scrape_ts=100.5)
    assert ledger.pending_kw("a") == 0.0


def test_numbered_and_unnumbered_confirmations_mix() -> None:
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.reserve("a", "numbered", 10.0)
    ledger.reserve("a", "unnumbered", 5.0)
    ledger.confirm("a", "numbered", now=1.0, seq=50)
    ledger.confirm("a", "unnumbered", now=1.0)
    ledger.observe("a", 15.0, at=0.5, seq=60)  # numbered: it includes seq 50, not the other
    assert ledger.pending_kw("a") == 5.0
    ledger.reserve("a", "numbered-2", 3.0)
    ledger.confirm("a", "numbered-2", now=2.0, seq=61)
    ledger.settle("a", scrape_ts=3.0)           # a scrape counts both kinds by time
    assert ledger.pending_kw("a") == 0.0


def test_doubtful_kw_is_what_a_reading_may_count_twice() -> None:
    ledger = PendingLedger()
    ledger.reserve("s", "in-flight-early", 11.0)
    assert ledger.doubtful_kw("s") == 0.0              # no reading yet: nothing counted twice
    ledger.observe("s", 33.0, at=1000.0, seq=5)        # may include the early one
    ledger.reserve("s", "in-flight-late", 7.0)         # after the reading: cannot be in it
    assert ledger.pending_kw("s") == 18.0
    assert ledger.doubtful_kw("s") == 11.0
    ledger.confirm("s", "in-flight-early", now=1000.5, seq=5)
    assert ledger.doubtful_kw("s") == 0.0              # its accept says where it stands
    ledger.settle("s", scrape_ts=1010.0)               # the scrape replaces the reading
    assert ledger.doubtful_kw("s") == 0.0


def test_a_scrape_with_a_reading_number_settles_exactly_the_accepts_it_counts() -> None:
    ledger = PendingLedger(clock_skew_s=0.5)
    for sid, seq in (("counted", 10), ("after-the-scrape", 12)):
        ledger.reserve("s", sid, 11.0)
        # Both confirmed just before the scrape's time: by time alone the slack keeps both.
        ledger.confirm("s", sid, now=999.9, seq=seq)
    ledger.settle("s", scrape_ts=1000.0, seq=11)
    assert ledger.pending_kw("s") == 11.0            # only the accept numbered above 11 is left
    ledger.settle("s", scrape_ts=1001.0, seq=12)
    assert ledger.pending_kw("s") == 0.0


def test_an_answer_newer_than_the_scrape_stays_the_observed_load() -> None:
    ledger = PendingLedger()
    ledger.observe("s", 44.0, at=999.0, seq=20)
    ledger.settle("s", scrape_ts=1005.0, seq=19)      # scraped before that answer was read
    assert ledger.observed_load_kw("s") == 44.0
    ledger.settle("s", scrape_ts=1006.0, seq=20)
    assert ledger.observed_load_kw("s") is None       # the scrape is the base again


def test_a_reading_without_reservations_has_no_doubt() -> None:
    ledger = PendingLedger()
    ledger.observe("a", 33.0, at=1.0, seq=1)
    assert ledger.doubtful_kw("a") == 0.0
    assert ledger.doubtful_kw("never-seen") == 0.0


def test_nothing_of_a_departed_substation_is_kept() -> None:
    # Memory stays bounded however many substations come and go: no structure of the ledger
    # keeps a trace of one that left.
    ledger = PendingLedger()
    ledger.reserve("gone", "s1", 5.0)
    ledger.observe("gone", 20.0, at=1.0, seq=4)
    ledger.forget_except({"kept"})
    traces = [name for name, value in vars(ledger).items()
              if isinstance(value, dict) and "gone" in value]
    assert traces == []


def test_an_answer_older_than_the_scrape_arriving_after_it_does_not_become_the_base() -> None:
    ledger = PendingLedger()
    ledger.observe("s", 10.0, at=999.0, seq=10)
    ledger.reserve("s", "x", 11.0)   # admitted at reading 13
    ledger.reserve("s", "y", 11.0)   # admitted at reading 15
    ledger.confirm("s", "y", now=999.5, seq=15)
    ledger.settle("s", scrape_ts=1000.0, seq=15)     # counts x and y: 32 kW
    assert ledger.observed_load_kw("s") is None and ledger.pending_kw("s") == 11.0
    # x's accept (reading 13: 21 kW, without y) arrives only now. Taken as the base, it would
    # drop y's 11 kW, which the ledger no longer holds: 11 kW undercounted.
    ledger.confirm("s", "x", now=1000.1, seq=13)
    assert not ledger.observe("s", 21.0, at=1000.1, seq=13)
    assert ledger.observed_load_kw("s") is None and ledger.pending_kw("s") == 0.0


def test_an_accept_arriving_after_a_reading_that_counts_it_is_settled_at_once() -> None:
    ledger = PendingLedger()
    ledger.reserve("s", "x", 11.0)
    ledger.reserve("s", "y", 7.0)
    ledger.confirm("s", "y", now=1.0, seq=21)
    ledger.observe("s", 18.0, at=1.0, seq=21)        # y's answer: it counts x (seq 20) too
    assert ledger.pending_kw("s") == 11.0            # x: in flight, maybe in the reading
    ledger.confirm("s", "x", now=1.1, seq=20)
    assert not ledger.observe("s", 11.0, at=1.1, seq=20)
    assert ledger.pending_kw("s") == 0.0 and ledger.observed_load_kw("s") == 18.0
    ledger.reserve("s", "z", 5.0)
    ledger.confirm("s", "z", now=1.2, seq=22)        # newer than the reading: still pending
    assert ledger.pending_kw("s") == 5.0


def test_a_scrape_sets_the_number_only_where_it_is_the_base() -> None:
    # An unnumbered answer newer by time than the scrape stays the base: the scrape's number
    # says nothing about what that answer counts, so an accept numbered below it stays pending.
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.observe("s", 30.0, at=1002.0)
    ledger.settle("s", scrape_ts=1000.0, seq=40)
    assert ledger.observed_load_kw("s") == 30.0
    ledger.reserve("s", "x", 11.0)
    ledger.confirm("s", "x", now=1003.0, seq=39)
    assert ledger.pending_kw("s") == 11.0


def test_an_accept_absorbed_by_a_reading_it_arrived_after_still_ends_in_that_reading() -> None:
    ledger = PendingLedger(clock_skew_s=0.5, end_margin_s=1.0)
    ledger.reserve("s", "x", 11.0)
    ledger.reserve("s", "y", 7.0)
    ledger.confirm("s", "y", now=100.0, seq=21)
    ledger.observe("s", 18.0, at=100.0, seq=21)      # no forecast of its own: counts x too
    ledger.confirm("s", "x", now=100.2, seq=20, ends_at=130.0)
    assert ledger.pending_kw("s") == 0.0
    ledger.expire(130.4)
    assert ledger.observed_load_kw("s") == 18.0      # not yet: ends are taken late
    ledger.expire(130.5)
    assert ledger.observed_load_kw("s") == 7.0       # x ended inside the reading


def test_an_accept_absorbed_at_arrival_leaves_unnumbered_entries_pending() -> None:
    # Only the accept the base's number counts leaves: an unnumbered one (a substation that
    # does not number its answers) is settled by time, at the next scrape.
    ledger = PendingLedger(clock_skew_s=0.0)
    ledger.reserve("s", "unnumbered", 5.0)
    ledger.confirm("s", "unnumbered", now=99.0)
    ledger.reserve("s", "x", 11.0)
    ledger.settle("s", scrape_ts=98.0, seq=30)
    ledger.confirm("s", "x", now=100.0, seq=29)
    assert ledger.pending_kw("s") == 5.0
