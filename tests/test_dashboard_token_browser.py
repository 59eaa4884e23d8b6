"""A dashboard whose token the server rejects says so, in every mode: a red banner and no green pill.

In the default mode (the session directory, no --participant) a rejected token used to look like a quiet
clinic: "server: connected" in green and no recent sessions. Checked in Chromium with an unknown token in
both modes, and with a token revoked while the dashboard runs.
"""
import httpx
import pytest

from browser_harness import DESKTOP, browser, by_id, needs_chromium, set_viewport, wait_until  # noqa: F401
from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from moodstream.server.auth import revoke_token
from server_harness import write_tokens

pytestmark = needs_chromium

GREEN = "rgba(4, 120, 87, 1)"  # --ok
RED_BANNER = "rgba(185, 28, 28, 1)"  # --bad


def assert_token_rejected_is_shown(driver, dashboard):
    banner = wait_until(driver, lambda d: (b := by_id(d, "token-error")).is_displayed() and b,
                        "the token banner")
    assert banner.text.startswith("Token rejected.") and "rejected the dashboard's token" in banner.text, banner.text
    assert banner.value_of_css_property("color") == RED_BANNER
    pill = by_id(driver, "server-pill")
    wait_until(driver, lambda d: by_id(d, "server-pill").text == "server: token rejected", "the pill to say so")
    assert "ok" not in pill.get_attribute("class").split() and "bad" in pill.get_attribute("class").split()
    assert pill.value_of_css_property("color") != GREEN
    connection = httpx.get(dashboard.url + "api/overview", timeout=10).json()["connection"]
    assert connection["token_rejected"] is True and "rejected" in connection["token_error"]


@pytest.mark.parametrize("participants", [[], ["p1"]], ids=["session-directory", "named-participant"])
def test_an_unknown_token_gives_a_red_banner_and_no_green_pill(browser, start_server, participants):
    server = start_server()
    config = FeedConfig(server=f"127.0.0.1:{server.port}", token="not-a-token-the-server-knows",
                        participants=participants, health_interval=0.3, discover_interval=0.3)
    with BackgroundDashboard(config) as dashboard:
        set_viewport(browser, DESKTOP)
        browser.get(dashboard.url)
        assert_token_rejected_is_shown(browser, dashboard)
        assert by_id(browser, "sessions").text.count("No sessions can be shown") == 1


def test_a_token_revoked_while_the_dashboard_runs_turns_the_pill_red(browser, start_server, tmp_path):
    tokens = write_tokens(tmp_path)
    server = start_server(tokens=tokens)
    config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"], participants=[],
                        health_interval=0.3, discover_interval=0.3)
    with BackgroundDashboard(config) as dashboard:
        set_viewport(browser, DESKTOP)
        browser.get(dashboard.url)
        wait_until(browser, lambda d: by_id(d, "server-pill").text == "server: connected", "a connected server")
        assert by_id(browser, "server-pill").value_of_css_property("color") == GREEN
        assert not by_id(browser, "token-error").is_displayed()
        revoke_token(tokens.path, "reader-p1")
        assert_token_rejected_is_shown(browser, dashboard)
