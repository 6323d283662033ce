"""The `tubelet serve` page in a real headless Chromium (Debian's, driven by Playwright's Python client).

With the embedded default model: submit a prompt, watch the progress bar move and a preview appear,
see the clip play in the gallery, cancel a second job, check that a prompt holding markup is shown as
text, switch to Chinese, reuse a clip's settings, and save a screenshot. `.ci/run` installs Chromium
when it is missing (`.ci/install-browser`); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api")

from conftest import CHROMIUM, free_port  # noqa: E402

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine: run .ci/install-browser (apt-get install chromium)"
)


def serve(data: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tubelet", "serve", "--data-dir", str(data), "--port", str(port), "--device", "cpu", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            httpx.get(base + "/healthz", timeout=2)
            return proc, base
        except httpx.HTTPError:
            assert time.monotonic() < end, "the server did not come up"
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_page_generates_shows_progress_cancels_and_escapes(browser: Any, tmp_path: Path) -> None:
    proc, base = serve(tmp_path / "data")
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900}, locale="en-US")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.wait_for_selector("#model-name:has-text('shapes-t2v')", timeout=120_000)
        assert page.inner_text("#submit") == "Generate"
        assert page.is_hidden("#token-box") and page.is_hidden("#image")  # t2v: no upload fields

        page.click("#advanced summary")
        assert page.input_value("#num_inference_steps") == "20"  # the model's default
        page.fill("#num_inference_steps", "60")
        page.fill("#seed", "4")
        prompt = "a big red circle moving right and a small blue square moving up"
        page.fill("#prompt", prompt)
        page.click("#submit")
        card = page.locator("#queue li.job").first
        card.wait_for(timeout=30_000)
        widths: list[float] = []
        end = time.monotonic() + 120
        while time.monotonic() < end:
            status = page.evaluate(
                "() => { const li = document.querySelector('#queue li.job');"
                " return li ? [li.dataset.status, li.querySelector('.fill').style.width] : null }"
            )
            if status is None:
                break
            if status[0] == "in_progress" and status[1]:
                widths.append(float(status[1].rstrip("%")))
            time.sleep(0.1)
        moving = sorted(set(w for w in widths if 0 < w < 100))
        assert len(moving) >= 2, widths  # the bar moved while the clip rendered
        video = page.locator("#gallery li.job[data-status=completed] video")
        video.first.wait_for(timeout=60_000)
        page.wait_for_function(
            "() => { const v = document.querySelector('#gallery video'); return v && v.readyState >= 2 && v.duration > 0 }",
            timeout=30_000,
        )
        assert page.locator("#gallery li.job .prompt").first.inner_text() == prompt

        # A second job, cancelled from its card while it waits or runs; a preview shows meanwhile.
        page.fill("#num_inference_steps", "1000")
        page.fill("#prompt", "a small yellow triangle moving left")
        page.click("#submit")
        running = page.locator("#queue li.job[data-status=in_progress]")
        running.wait_for(timeout=60_000)
        page.wait_for_function(
            "() => { const i = document.querySelector('#queue img.preview'); return i && i.naturalWidth > 0 }",
            timeout=60_000,
        )
        page.screenshot(path=str(tmp_path / "serve-running.png"), full_page=True)
        running.locator("button.cancel").click()
        page.locator("#gallery li.job[data-status=cancelled]").wait_for(timeout=60_000)

        # A prompt with markup is shown as text: no element is made from it, no script runs. From the
        # form, the model's grammar refuses it at once (400) and the message quoting it is text.
        evil = '<img src=x onerror="window.__xss=1"> a red square moving down'
        page.fill("#num_inference_steps", "2")
        page.fill("#prompt", evil)
        page.click("#submit")
        page.wait_for_function(
            "() => document.querySelector('#form-error').textContent.includes('unknown word')"
        )
        assert evil in page.inner_text("#form-error")  # quoted whole, as text
        # A stored job holding it (e.g. queued for an earlier model) fails when it runs, shown as text.
        from tubelet.pipelines import GenerationRequest
        from tubelet.serve.store import JobStore

        stored = JobStore(tmp_path / "data" / "jobs.sqlite")
        stored.add(GenerationRequest(evil, num_inference_steps=2, seed=1).to_dict())
        stored.close()
        page.locator("#gallery li.job[data-status=failed]").wait_for(timeout=60_000)
        assert page.locator("#gallery li.job[data-status=failed] .prompt").inner_text() == evil
        assert "null" not in page.inner_text("#gallery")  # settings left to the model are not shown as null
        assert page.evaluate("() => document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.evaluate("() => window.__xss === undefined")

        # "Use these settings" puts a finished clip's settings back in the form.
        page.fill("#prompt", "")
        page.locator("#gallery li.job[data-status=completed] button.use").click()
        assert page.input_value("#prompt") == prompt
        assert page.input_value("#num_inference_steps") == "60" and page.input_value("#seed") == "4"

        page.click("#lang")
        assert page.inner_text("#submit") == "生成"
        page.click("#lang")
        assert page.inner_text("#submit") == "Generate"
        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("TUBELET_SCREENSHOTS"):
            Path(os.environ["TUBELET_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            for name in ("serve-page.png", "serve-running.png"):
                shutil.copy(tmp_path / name, Path(os.environ["TUBELET_SCREENSHOTS"]) / name)
        assert errors == [], errors
    finally:
        stop(proc)


def test_page_asks_for_the_token_once(browser: Any, tmp_path: Path) -> None:
    proc, base = serve(tmp_path / "data", "--token", "page-token-123", "--preview-every", "0")
    try:
        ctx = browser.new_context(locale="zh-CN")
        page = ctx.new_page()
        page.goto(base + "/")
        page.wait_for_selector("#token-box:not([hidden])", timeout=30_000)
        assert page.inner_text("#submit") == "生成"  # the browser's language
        page.fill("#token", "page-token-123")
        page.click("#token-save")
        page.wait_for_selector("#model-name:has-text('shapes-t2v')", timeout=120_000)
        page.reload()  # the token is kept: not asked again
        page.wait_for_selector("#model-name:has-text('shapes-t2v')", timeout=120_000)
        assert page.is_hidden("#token-box")
        ctx.close()
    finally:
        stop(proc)


def test_page_draws_box_tracks_on_first_and_last_frames(
    browser: Any, box_model: Path, tmp_path: Path
) -> None:
    import httpx

    proc, base = serve(tmp_path / "data", "--model", str(box_model))
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 1000}, locale="en-US")
        page.goto(base + "/")
        page.wait_for_selector("#boxes:not([hidden])", timeout=120_000)  # shown: this model takes boxes
        canvas = page.locator("#box-canvas")
        bb = canvas.bounding_box()
        assert bb is not None

        def drag(x0: float, y0: float, x1: float, y1: float) -> None:
            page.mouse.move(bb["x"] + x0 * bb["width"], bb["y"] + y0 * bb["height"])
            page.mouse.down()
            page.mouse.move(bb["x"] + x1 * bb["width"], bb["y"] + y1 * bb["height"], steps=5)
            page.mouse.up()

        drag(0.1, 0.4, 0.3, 0.6)  # object 0 starts on the left ...
        page.select_option("#box-frame", "last")
        drag(0.7, 0.4, 0.9, 0.6)  # ... and ends on the right
        page.click("#advanced summary")
        page.fill("#num_inference_steps", "2")
        page.fill("#prompt", "a big red circle moving right")
        page.click("#submit")
        page.locator("#gallery li.job[data-status=completed]").wait_for(timeout=120_000)
        job = httpx.get(base + "/v1/videos").json()["data"][0]
        (track,) = job["settings"]["boxes"]["tracks"]
        assert track["object"] == 0 and track["mode"] == "hard"
        first, last = track["keyframes"]
        assert first["frame"] == 0 and last["frame"] == 15  # the model's 16 frames
        for kf, want in ((first, (0.1, 0.4, 0.3, 0.6)), (last, (0.7, 0.4, 0.9, 0.6))):
            got = (kf["x0"], kf["y0"], kf["x1"], kf["y1"])
            assert max(abs(a - b) for a, b in zip(got, want)) < 0.02, (got, want)
    finally:
        stop(proc)
