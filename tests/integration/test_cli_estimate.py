"""`refit estimate` as an operator runs it before there is anything to estimate: one line each."""

from helpers import assert_one_line_error
from helpers import refit_cli as refit


def test_estimate_without_a_champion_says_so_in_one_line(db_url):
    assert_one_line_error(refit("estimate", env={"REFIT_DATABASE_URL": db_url}), "no champion model yet")


def test_estimate_of_the_served_answers_without_a_champion_says_so_in_one_line(db_url):
    result = refit("estimate", "--served", "--since", "2026-01-01", "--json", env={"REFIT_DATABASE_URL": db_url})
    assert_one_line_error(result, "no champion model yet")
