"""The web page at `/`, driven in Debian's headless chromium by Playwright (no browser download).

Screenshots (desktop and phone-sized) are saved under runs/screenshots/ and printed.
"""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[3] / "runs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "a small red circle in the top left on a blue background"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is absent: apt-get install -y chromium (CI installs it)")


@pytest.fixture
async def browser(tmp_path):
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1200, "height": 900}, service_workers="block")
        # Offline: any request that leaves the test server fails the page (no CDN, no fonts).
        outside: list[str] = []
        await context.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(
            "http://127.0.0.1:") or route.request.url.startswith("data:") else (
            outside.append(route.request.url), route.abort())[-1]))
        yield context
        await context.close()
        assert not outside, f"the page reached outside the server: {outside}"


def save(path: Path) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshot: {path}")
    return path


async def test_type_a_prompt_see_previews_then_images_best_first(http_served, browser):
    server, http = http_served
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"http://127.0.0.1:{server.http_port}/")
    await page.locator("#terms .term").first.wait_for()          # the vocabulary, from /v1/info
    assert await page.locator("#terms").get_by_text("red · 红色").count() == 1
    await page.fill("#prompt", PROMPT)
    await page.fill("#num-images", "2")
    await page.fill("#num-candidates", "4")
    await page.fill("#seed", "7")
    await page.evaluate("""() => { window.previews = 0; const img = document.getElementById('preview');
        new MutationObserver(() => { if (img.src.startsWith('data:image/png')) window.previews++; })
            .observe(img, {attributes: true, attributeFilter: ['src']}); }""")
    await page.click("#generate")
    await page.locator("body[data-state=done]").wait_for(timeout=60_000)
    cards = page.locator("#results .result")
    assert await cards.count() == 2
    assert await page.evaluate("window.previews") > 0            # live previews while sampling
    await page.screenshot(path=save(SHOTS / "web-page.png"), full_page=True)

    # The page shows exactly what the API returns for the same request: best first, seeds, scores.
    api = (await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": 2, "numCandidates": 4,
                                                 "seed": "7"})).json()["images"]
    shown = await cards.evaluate_all("cs => cs.map(c => [c.dataset.seed, c.querySelector('img').src,"
                                     " c.querySelector('.score').textContent])")
    assert [s[0] for s in shown] == [im["seed"] for im in api]
    assert [s[1] for s in shown] == ["data:image/png;base64," + im["png"] for im in api]
    assert [s[2] for s in shown] == [f"CLIP {im['clipScore']:.3f}" for im in api]

    # Regenerate the second image from its seed: the card shows it is working (dimmed, busy, its
    # button saying so), then says what came back: the same picture.
    before = shown[1][1]
    await cards.nth(1).evaluate("""c => { window.busy = []; new MutationObserver(() => window.busy.push(
        [c.getAttribute('aria-busy'), c.querySelector('.regenerate').textContent,
         c.querySelector('.regenerate').disabled])).observe(c, {attributes: true, subtree: true, childList: true}); }""")
    await cards.nth(1).locator(".regenerate").click()
    await page.locator("#results .result.regenerated").wait_for(timeout=60_000)
    assert ["true", "Regenerating…", True] in await page.evaluate("window.busy")
    assert await cards.nth(1).locator("img").get_attribute("src") == before
    status = cards.nth(1).locator(".status")
    assert await status.is_visible() and "the same image" in await status.text_content()
    assert await cards.nth(1).get_attribute("aria-busy") is None
    assert await cards.nth(1).locator(".regenerate").text_content() == "Regenerate"
    assert base64.b64decode(before.split(",", 1)[1]).startswith(b"\x89PNG")
    assert not errors


async def test_chinese_prompt_and_an_error_as_a_sentence_on_a_phone(http_served, browser):
    server, _ = http_served
    page = await browser.new_page()
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone's CSS pixels
    await page.goto(f"http://127.0.0.1:{server.http_port}/")
    await page.locator("#terms .term").first.wait_for()
    await page.fill("#prompt", "!!!")
    await page.click("#generate")
    error = page.locator("#error:not([hidden])")
    await error.wait_for()
    text = await error.text_content()
    assert "empty" in text and text.endswith(".") and text[0].isupper()

    await page.fill("#prompt", "蓝色背景上左上角有一个小的红色圆形")
    await page.fill("#num-images", "1")
    await page.fill("#num-candidates", "2")
    await page.click("#generate")
    await page.locator("body[data-state=done]").wait_for(timeout=60_000)
    assert await page.locator("#error").is_hidden()
    assert await page.locator("#results .result img").count() == 1
    # Nothing wider than the phone's screen.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.screenshot(path=save(SHOTS / "web-page-phone.png"), full_page=True)


async def _vocabulary_fits(page) -> None:
    """Every word of the vocabulary is on the page, none behind a scroll box of its own."""
    await page.locator("#terms .term").first.wait_for()
    panel = page.locator("#vocabulary")
    assert await panel.evaluate("el => el.scrollHeight <= el.clientHeight + 1 && getComputedStyle(el).overflowY "
                                "=== 'visible'")
    box = await panel.bounding_box()
    chips = await page.locator("#terms .term").evaluate_all("cs => cs.map(c => c.getBoundingClientRect().bottom"
                                                            " + window.scrollY)")
    assert len(chips) > 10 and max(chips) <= box["y"] + box["height"]
    kinds = await page.locator("#terms h3").all_text_contents()
    assert len(kinds) >= 3, kinds  # colours, and the positions and shapes after them


@pytest.mark.parametrize("viewport", [{"width": 1200, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "phone"])
async def test_what_it_can_draw_is_all_on_the_page(http_served, browser, viewport):
    server, _ = http_served
    page = await browser.new_page()
    await page.set_viewport_size(viewport)
    await page.goto(f"http://127.0.0.1:{server.http_port}/")
    await _vocabulary_fits(page)


async def test_a_seed_stays_one_number_on_a_phone(http_served, browser):
    server, _ = http_served
    page = await browser.new_page()
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"http://127.0.0.1:{server.http_port}/")
    await page.locator("#terms .term").first.wait_for()
    await page.evaluate("""png => { const list = document.getElementById('results');
        list.replaceChildren(...[1, 2].map(r => card({seed: '18446744073709551615', png, width: 64, height: 64,
                                                      clipScore: 0.25}, r, 'a red circle'))); }""", "")  # no image: only the layout counts
    values = page.locator("#results .seed .value")
    assert await values.count() == 2
    for i in range(2):
        assert await values.nth(i).evaluate("v => v.getClientRects().length === 1 && v.textContent.length === 20")
        assert await values.nth(i).evaluate("v => v.getBoundingClientRect().right <= "
                                            "v.closest('.result').getBoundingClientRect().right")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def test_the_unknown_words_notice_goes_with_its_prompt(http_served, browser):
    server, _ = http_served
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{server.http_port}/")
    await page.locator("#terms .term").first.wait_for()
    await page.fill("#prompt", "a red cat")
    await page.fill("#num-images", "1")
    await page.fill("#num-candidates", "1")
    await page.click("#generate")
    await page.locator("body[data-state=done]").wait_for(timeout=60_000)
    notice = page.locator("#unknown")
    assert await notice.is_visible() and "cat" in await notice.text_content()
    await page.locator("#prompt").press("End")
    await page.keyboard.type(" on blue")  # a new prompt: the notice was about the old one
    assert await notice.is_hidden()


async def test_a_pipeline_without_a_reranker_says_what_it_is_and_asks_one_candidate_per_image(http_served, browser):
    # The bundled model first: it reads Chinese and reranks, so 16 candidates make sense.
    server, _ = http_served
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{server.http_port}/")
    await page.locator("#terms .term").first.wait_for()
    assert await page.locator("#prompt-hint").text_content() == "English or 中文"
    assert await page.input_value("#num-candidates") == "16"
    assert "(its tokenizer.json))" not in await page.locator("#model").text_content()

    from tests.ops.examples.test_gradient import example_config
    from tests.server.http.conftest import http_serving
    async with http_serving(example_config()) as (example, _):
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{example.http_port}/")
        await page.locator("#terms .term").first.wait_for()
        subtitle = await page.locator("#model").text_content()
        assert subtitle == ("gradient (example) · 64×64 images · prompts read as colour words · "
                            "no reranker: images in sampling order")
        assert await page.locator("#prompt-hint").text_content() == "English"  # no Chinese words listed
        assert await page.input_value("#num-candidates") == ""  # the server's default: one per image
        assert await page.locator("#candidates-hint").text_content() == "no reranker: one per image"
        await page.fill("#prompt", "purple to yellow")
        await page.fill("#num-images", "2")
        await page.click("#generate")
        await page.locator("body[data-state=done]").wait_for(timeout=60_000)
        assert await page.locator("#results .result img").count() == 2
