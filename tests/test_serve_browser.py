"""The chat page in a real headless Chromium (Debian's chromium, driven by playwright): type a
message, see the streamed answer appear, press Stop on a long one; a screenshot goes into the
test's tmp directory (SERVE_SCREENSHOT=path saves another copy, as the README's was made)."""
import os
import shutil
import time

import pytest

from microgpt.serve.app import create_app
from serve_helpers import serve_in_thread, tiny_model, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_the_page_streams_an_answer_and_stops(tmp_path):
    model, tok = tiny_model(block=4096)
    app = create_app(model, tok, "tiny")
    with serve_in_thread(app) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(base + "/", timeout=20_000)
            page.fill("#system", "You are terse.")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "40")
            page.fill("#input", "Hello there")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.user", timeout=10_000)
            page.wait_for_function("document.querySelector('#send').disabled === false && "
                                   "document.querySelectorAll('.msg.assistant').length === 1", timeout=30_000)
            reply = page.inner_text(".msg.assistant")
            assert reply.strip() and "Error" not in reply
            shot = tmp_path / "chat.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 1000
            if os.environ.get("SERVE_SCREENSHOT"):
                page.screenshot(path=os.environ["SERVE_SCREENSHOT"])
            # a long answer, stopped: the server cancels the sequence and frees its blocks
            page.fill("#max_tokens", "900")
            # an answer longer than the window: the log scrolls, the input row and Stop stay put
            stop_at = page.locator("#stop").bounding_box()
            page.eval_on_selector(".msg.assistant", "e => { e.textContent = 'many words '.repeat(3000); }")
            assert page.eval_on_selector("#log", "e => e.scrollHeight > 2 * e.clientHeight"), "the log does not scroll"
            assert page.locator("#stop").bounding_box() == stop_at, "a long answer pushed the Stop button away"
            scheduler = app.state.engine.scheduler
            step = scheduler.step                  # a step of the tiny model takes well under 1 ms:
            scheduler.step = lambda: (time.sleep(0.01), step())[1]    # slow it so Stop finds it running
            page.fill("#input", "Tell me everything")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelector('#stop').disabled === false", timeout=10_000)
            wait_until(lambda: scheduler.num_running == 1, what="the long answer runs")
            wait_until(lambda: len(page.inner_text(".msg.assistant >> nth=1")) > 5, what="it streams")
            page.click("#stop")
            wait_until(lambda: not scheduler.has_work() and scheduler.cache.pool.num_used == 0, timeout=15,
                       what="Stop cancels the sequence")
        finally:
            browser.close()
