"""Enrolling a phone in real headless Chromium: the link's single-use code is traded for the token (Enrol over
gRPC-web, a POST), the token lives in IndexedDB and nowhere in the browser's History database, a used,
expired, unknown or old-style link gets a page that says so, a device enrolled by an older page keeps
working, and revoking the token stops the phone.
"""
import shutil
import sqlite3
import time
from pathlib import Path

import grpc

from browser_harness import by_id, chromium, fake_microphone, needs_chromium, wait_until
from moodstream.record_link import record_link
from moodstream.server.auth import revoke_token
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import stub_for
from test_record_browser import enrolment_link, interview_wav, page_state, record_stack  # noqa: F401

pytestmark = needs_chromium

CREDENTIALS_SCRIPT = """
const done = arguments[0];
const request = indexedDB.open('moodstream-record-device');
request.onsuccess = () => {
  const read = request.result.transaction('credentials').objectStore('credentials').get('current');
  read.onsuccess = () => done({stored: read.result || null, local: {...localStorage}});
};"""


def loaded(driver) -> bool:
    return driver.execute_script("return document.body.dataset.ready === '1' || !document.getElementById("
                                 "'no-link').hidden")


def enrolment_state(driver) -> str:
    return driver.execute_script("return document.body.dataset.enrolment || ''")


def history_urls(profile: Path, tmp_path: Path) -> tuple[list[str], bytes]:
    """The URLs in Chromium's History database and the database's raw bytes, from a copy (Chromium keeps the
    file locked while it runs)."""
    copy = tmp_path / "History"
    shutil.copyfile(profile / "Default" / "History", copy)
    journal = profile / "Default" / "History-journal"
    raw = copy.read_bytes() + (journal.read_bytes() if journal.exists() else b"")
    with sqlite3.connect(copy) as database:
        urls = [url for (url,) in database.execute("SELECT url FROM urls")]
    return urls, raw


def test_an_enrolled_phone_holds_its_token_in_indexeddb_and_none_in_its_history_and_stops_when_revoked(
        redis_url, tmp_path, interview_wav):
    wav, _ = interview_wav
    with record_stack(redis_url, tmp_path) as (server, dashboard, tokens), \
            chromium(*fake_microphone(wav)) as driver:
        token = tokens.by_name["agent-p1"]
        link = enrolment_link(server, dashboard.url, tokens)
        driver.get(link)
        wait_until(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1", "the page to load")
        assert enrolment_state(driver) == "enrolled" and "#" not in driver.current_url
        assert by_id(driver, "participant").text == "p1"
        kept = driver.execute_async_script(CREDENTIALS_SCRIPT)
        assert kept["stored"]["token"] == token and kept["stored"]["participant"] == "p1"
        assert token not in str(kept["local"])  # nothing in localStorage

        # Chromium writes History a while after a visit: wait until it holds the enrolment link's visit.
        profile = Path(driver.capabilities["chrome"]["userDataDir"])
        driver.get(f"{dashboard.url}record")  # another visit, and a reason to write
        wait_until(driver, lambda d: any("/record" in url for url in history_urls(profile, tmp_path)[0]),
                   "Chromium to write the record page's visit to its History database", timeout=90)
        urls, raw = history_urls(profile, tmp_path)
        assert token.encode() not in raw and not any(token in url for url in urls), urls
        code = link.split("#enrol=")[1]
        assert not [url for url in urls if "token=" in url], urls

        # The link opened again (from that history): refused as used, and the device stays enrolled.
        driver.get("about:blank")  # the link differs from this page only in its fragment: load it afresh
        driver.get(link)
        wait_until(driver, lambda d: enrolment_state(d) == "used-or-expired", "the used link to be refused")
        wait_until(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1", "the page to load")
        problem = page_state(driver)["problem"]
        assert "already used" in problem and "stays enrolled for p1" in problem, problem
        assert by_id(driver, "start").is_displayed()

        # Revoking the token stops the phone: the next chunk is refused and the page says so.
        by_id(driver, "start").click()
        wait_until(driver, lambda d: page_state(d)["sent"] >= 1, "the first chunk's ack", timeout=60)
        revoke_token(tokens.path, "agent-p1")
        wait_until(driver, lambda d: page_state(d)["network"] == "stopped", "the phone to stop sending", timeout=60)
        assert "Unauthenticated" in page_state(driver)["problem"], page_state(driver)
        assert "new link" in page_state(driver)["problem"]
    print({"history_urls": [url.replace(code, "<code>") for url in urls]})


def test_a_link_that_cannot_enrol_gets_a_page_that_says_why(redis_url, tmp_path):
    with record_stack(redis_url, tmp_path) as (server, dashboard, tokens), chromium() as driver:
        used = enrolment_link(server, dashboard.url, tokens)
        with stub_for(server.port) as stub:  # another device took it first
            stub.Enrol(pb.EnrolRequest(code=used.split("#enrol=")[1], device_claim="another-phone"), timeout=30)
        expired = enrolment_link(server, dashboard.url, tokens, seconds=60, now=time.time() - 120)
        page = f"{dashboard.url}record"
        cases = {
            "used": (used, "used-or-expired", "This link can no longer be used: this enrolment code was already used"),
            "expired": (expired, "used-or-expired", "this enrolment code expired at"),
            "unknown": (record_link(page, "A" * 22), "unknown", "This link is not known"),
            "cut short": (record_link(page, "A" * 10), "incomplete", "This link is incomplete"),
            "old kind": (f"{page}#participant=p1&token={tokens.by_name['agent-p1']}", "old-link",
                         "older kind, which carried the access token itself"),
        }
        for name, (link, kind, says) in cases.items():
            # Each link differs from the last only in its fragment: load the page afresh.
            driver.get("about:blank")
            driver.get(link)
            wait_until(driver, lambda d: enrolment_state(d) not in ("", "enrolling"), f"the {name} link's answer",
                       timeout=30)
            assert enrolment_state(driver) == kind, (name, enrolment_state(driver))
            banner = by_id(driver, "no-link")
            assert banner.is_displayed() and says in banner.text, (name, banner.text)
            assert "ask your clinician for a new link" in banner.text and "cannot record" in banner.text
            assert not by_id(driver, "controls").is_displayed() and "#" not in driver.current_url
            assert driver.execute_async_script(CREDENTIALS_SCRIPT)["stored"] is None


def test_a_device_enrolled_by_an_older_page_keeps_recording_and_its_token_moves_to_indexeddb(redis_url, tmp_path):
    with record_stack(redis_url, tmp_path) as (server, dashboard, tokens), chromium() as driver:
        token = tokens.by_name["agent-p1"]
        driver.get(f"{dashboard.url}record")
        wait_until(driver, lambda d: by_id(d, "no-link").is_displayed(), "the page without a link")
        driver.execute_script("localStorage.setItem('moodstream.record.credentials', JSON.stringify("
                              "{token: arguments[0], participant: 'p1'}))", token)
        driver.refresh()
        wait_until(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1",
                   "the page to load with the stored credentials")
        assert by_id(driver, "participant").text == "p1" and by_id(driver, "start").is_displayed()
        kept = driver.execute_async_script(CREDENTIALS_SCRIPT)
        assert kept["stored"]["token"] == token and kept["local"] == {}
