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


def _png(size: int, colour: str) -> str:
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


# A BPE model as /v1/info describes one: an open vocabulary (no words listed), no reranker.
WORDS_INFO = {"modelName": "tiny-dalle.pt", "modelKind": "dalle-pytorch", "imageWidth": 16, "imageHeight": 16,
              "textContext": 8, "tokenizer": "CLIP BPE", "imageTokens": 16, "rerank": False,
              "limits": {"maxNumImages": 3, "maxNumCandidates": 6, "maxPromptChars": 200},
              "defaults": {"guidanceScale": 3, "numImages": 1}, "vocabulary": {}}


async def test_the_model_selector_shows_each_models_own_description_and_draws_with_it(http_served, browser):
    """Two models, as /v1/models and /v1/info?model= describe them (routed in the browser, so the
    page's part is tested alone): the first is the served shapes model, the second a BPE model
    answered here. Each choice shows its own description, limits and words, and asks its own model."""
    server, _ = http_served
    base = f"http://127.0.0.1:{server.http_port}"
    asked: list[dict] = []
    infos: list[str] = []

    async def models(route):
        await route.fulfill(json={"models": [
            {"name": "shapes", "version": "1", "modelKind": "tessera", "modelName": "shapes", "state": "serving"},
            {"name": "words", "version": "2", "modelKind": "dalle-pytorch", "modelName": "tiny-dalle.pt",
             "state": "serving"}]})

    async def info(route):
        infos.append(route.request.url.split("/v1/info", 1)[1])
        if route.request.url.endswith("?model=words"):
            await route.fulfill(json=WORDS_INFO)
        else:  # the served model, which a request naming none gets
            await route.continue_(url=f"{base}/v1/info")

    async def stream(route):
        import json
        body = json.loads(route.request.post_data)
        asked.append(body)
        if body.get("model") == "words":
            result = {"result": {"requestId": "r", "images": [{"png": _png(16, "green"), "seed": body.get("seed", "5"),
                                                               "width": 16, "height": 16}]}}
            await route.fulfill(status=200, headers={"content-type": "text/event-stream"},
                                body=f"event: result\ndata: {json.dumps(result)}\n\n")
        else:  # the served model: asked as the one a request naming none gets
            await route.continue_(post_data=json.dumps({k: v for k, v in body.items() if k != "model"}))

    page = await browser.new_page()
    await page.route("**/v1/models", models)
    await page.route("**/v1/info*", info)
    await page.route("**/v1/generate:stream", stream)
    await page.goto(f"{base}/")
    await page.locator("#terms .term").first.wait_for()
    choice = page.locator("#model-choice")
    assert await choice.is_visible()
    assert await page.locator("#models option").all_text_contents() == ["shapes (version 1)", "words (version 2)"]
    assert infos == ["?model=shapes"]
    shapes_subtitle = await page.locator("#model").text_content()

    await page.select_option("#models", "words")
    await page.locator("#model", has_text="tiny-dalle.pt").wait_for()
    assert await page.locator("#model").text_content() == (
        "tiny-dalle.pt (dalle-pytorch) · 16×16 images · prompts up to 8 tokens, CLIP BPE · "
        "no reranker: images in sampling order")
    assert await page.locator("#terms .term").count() == 0  # no shapes vocabulary for a BPE model
    assert "any English text" in await page.locator("#vocabulary-note").text_content()
    assert await page.locator("#prompt-hint").text_content() == "English"
    assert await page.get_attribute("#num-images", "max") == "3" and await page.input_value("#num-images") == "3"
    assert await page.get_attribute("#num-candidates", "max") == "6"
    assert await page.input_value("#num-candidates") == ""  # no reranker: one per image
    assert await page.get_attribute("#prompt", "maxlength") == "200"
    assert await page.get_attribute("#guidance", "placeholder") == "default 3"
    await page.fill("#prompt", "a photo of a cat")
    await page.fill("#seed", "5")
    await page.click("#generate")
    await page.locator("body[data-state=done]").wait_for(timeout=60_000)
    assert asked[-1]["model"] == "words" and asked[-1]["numImages"] == 3 and "numCandidates" not in asked[-1]
    assert await page.locator("#results .result .score").all_text_contents() == ["not reranked"]

    # Back to the first model: its words, its reranker's 16 candidates, and its own images.
    await page.select_option("#models", "shapes")
    await page.locator("#terms .term").first.wait_for()
    assert await page.locator("#model").text_content() == shapes_subtitle
    assert await page.locator("#terms").get_by_text("red · 红色").count() == 1
    assert await page.input_value("#num-candidates") == "16" and await page.locator("#candidates-hint").text_content() == ""
    assert await page.get_attribute("#num-images", "max") == "16"
    await page.fill("#prompt", PROMPT)
    await page.fill("#num-images", "1")
    await page.fill("#num-candidates", "2")
    await page.click("#generate")
    await page.locator("body[data-state=done] #results .result .score", has_text="CLIP").wait_for(timeout=60_000)
    assert asked[-1]["model"] == "shapes"
    # A card regenerates with the model that drew it, whichever the selector shows now.
    await page.select_option("#models", "words")
    await page.locator("#model", has_text="tiny-dalle.pt").wait_for()
    await page.locator("#results .result .regenerate").first.click()
    await page.locator("#results .result.regenerated").wait_for(timeout=60_000)
    assert asked[-1]["model"] == "shapes" and asked[-1]["numCandidates"] == 1
    await page.screenshot(path=save(SHOTS / "web-page-models.png"), full_page=True)


async def test_one_model_or_a_server_from_before_v1_models_shows_no_selector(http_served, browser):
    server, _ = http_served
    for old in (False, True):
        page = await browser.new_page()
        bodies: list[str] = []
        page.on("request", lambda r: bodies.append(r.post_data) if r.url.endswith("/v1/generate:stream") else None)
        if old:  # what a server from before /v1/models answers
            await page.route("**/v1/models", lambda route: route.fulfill(status=404, json={"code": 5, "message": "no such path"}))
        await page.goto(f"http://127.0.0.1:{server.http_port}/")
        await page.locator("#terms .term").first.wait_for()
        assert await page.locator("#model-choice").is_hidden()
        await page.fill("#prompt", "a red circle")
        await page.fill("#num-images", "1")
        await page.fill("#num-candidates", "1")
        await page.click("#generate")
        await page.locator("body[data-state=done]").wait_for(timeout=60_000)
        assert await page.locator("#results .result img").count() == 1
        if old:
            assert '"model"' not in bodies[-1]  # an old server is asked as it always was
        await page.close()


# The served shapes model's words as GetInfo carries them now (the family's own field alone)
# and as a server from before ServerInfo.shapes sends them (the top-level vocabulary alone).
SHAPES_WORDS = {"colors": [{"en": "red", "zh": "红色"}], "shapes": [{"en": "circle", "zh": "圆形"}]}


@pytest.mark.parametrize("words", [{"shapes": {"vocabulary": SHAPES_WORDS}}, {"vocabulary": SHAPES_WORDS}],
                         ids=["family-field", "before-family-field"])
async def test_the_words_come_from_the_familys_field_or_an_older_servers_vocabulary(http_served, browser, words):
    server, _ = http_served
    base = f"http://127.0.0.1:{server.http_port}"

    async def info(route):
        served = await route.fetch(url=f"{base}/v1/info")
        body = {k: v for k, v in (await served.json()).items() if k not in ("shapes", "vocabulary")}
        await route.fulfill(json={**body, **words})

    page = await browser.new_page()
    await page.route("**/v1/info*", info)
    await page.goto(f"{base}/")
    await page.locator("#terms .term").first.wait_for()
    assert await page.locator("#terms .term").all_text_contents() == ["red · 红色", "circle · 圆形"]
    assert await page.locator("#prompt-hint").text_content() == "English or 中文"
