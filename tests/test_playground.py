"""`lambda-dpo playground`: the simplex logic on its own, the refusals, and the page itself driven in a real headless
Chromium (Debian's `chromium` package; Playwright cannot download a browser here) on the quick demo's model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lambda_dpo.cli import main
from lambda_dpo.playground import from_triangle, on_simplex, presets, rebalance, system_line, triangle_image

CHROMIUM = os.environ.get("LAMBDA_DPO_CHROMIUM", "/usr/bin/chromium")


@given(st.lists(st.floats(0, 1), min_size=2, max_size=6), st.data())
def test_rebalance_keeps_the_weight_set_and_stays_on_the_simplex(values, data):
    changed = data.draw(st.integers(0, len(values) - 1))
    out = rebalance(values, changed)
    assert abs(sum(out) - 1) < 1e-9 and all(0 <= v <= 1 for v in out)
    assert out[changed] == round(values[changed], 2)
    assert all(round(v * 100) == v * 100 or abs(round(v * 100) - v * 100) < 1e-6 for v in out)  # two decimals


def test_rebalance_keeps_the_others_in_proportion():
    assert rebalance([0.6, 0.3, 0.1], 0) == [0.6, 0.3, 0.1]
    assert rebalance([0.2, 0.6, 0.2], 1) == [0.2, 0.6, 0.2]
    assert rebalance([0.5, 0.25, 0.25], 0) == [0.5, 0.25, 0.25]
    assert rebalance([0.8, 0.5, 0.5], 0) == [0.8, 0.1, 0.1]
    assert rebalance([0.0, 1.0, 0.0], 1) == [0.0, 1.0, 0.0]
    assert rebalance([0.4, 0.0, 0.0], 0) == [0.4, 0.3, 0.3]  # the others were all 0: they share the rest equally
    assert on_simplex([1, 1, 1]) == [0.34, 0.33, 0.33] and on_simplex([0, 0]) == [0.5, 0.5]


def test_the_triangle_maps_corners_to_vertices_and_the_centre_to_uniform():
    from lambda_dpo.playground import _vertices

    assert [from_triangle(*corner) for corner in _vertices()] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    centre = [sum(c[i] for c in _vertices()) / 3 for i in range(2)]
    assert from_triangle(*centre) == on_simplex([1, 1, 1])
    assert from_triangle(150, 0) == [1.0, 0.0, 0.0]  # outside, above the top corner: clipped onto it
    image = triangle_image([0.2, 0.3, 0.5], ["a", "b", "c"])
    assert image.size == (300, 300)
    assert list(presets(["a", "b"])) == ["only a", "only b", "centre"]


def test_the_system_line_is_what_training_rendered():
    from lambda_dpo.conditioning import render_lambda

    text = {"dimensions": ["a", "b"], "conditioning_template": "W: {weights}", "condition_on_lambda": True,
            "conditioning": "text"}
    assert system_line(text, {"a": 0.7, "b": 0.3}) == render_lambda({"a": 0.7, "b": 0.3}, ["a", "b"], "W: {weights}")
    assert system_line(text, {"a": 0.7, "b": 0.3}, "Be brief.") == "W: a=0.70 b=0.30\nBe brief."
    assert "λ-adapters" in system_line({**text, "conditioning": "lora"}, {"a": 1.0, "b": 0.0})
    assert "not conditioned" in system_line({**text, "condition_on_lambda": False}, {"a": 1.0, "b": 0.0})


def test_a_folder_that_is_not_a_lambda_dpo_model_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["playground", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lambda-dpo playground: ") and "has no lambda_dpo.json" in err and "\n" not in err
    assert main(["playground", "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "lambda_dpo.json").write_text('{"dimensions": ["a", "b"]}')  # a model dir without its tokenizer
    assert main(["playground", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lambda-dpo playground: cannot load --model") and "has no tokenizer" in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settled(read, timeout: float = 90.0) -> str:
    """The value ``read()`` returns once it is non-empty and has not changed for a second (a stream has ended)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif value and time.monotonic() - since > 1.0:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no settled value within {timeout} s (last: {last!r})")


@pytest.fixture
def playground_url(quick_demo, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("LAMBDA_DPO_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium), and LAMBDA_DPO_REQUIRE_BROWSER is set")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    port = _free_port()
    log = open(tmp_path / "playground.log", "w")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen([sys.executable, "-m", "lambda_dpo.cli", "playground", "--model",
                               str(quick_demo[0] / "models" / "lambda-dpo"), "--port", str(port), "--device", "cpu"],
                              stdout=log, stderr=subprocess.STDOUT)  # a file: a full pipe would block the server
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        assert server.poll() is None, (tmp_path / "playground.log").read_text()
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_the_page_steers_the_demo_model_in_headless_chromium(playground_url, tmp_path):
    from playwright.sync_api import sync_playwright

    dims = ["concise", "detailed", "polite"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                          "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(playground_url)
        page.locator("#lambda-polite input[type=number]").wait_for(timeout=60_000)  # the app has rendered

        def weights() -> list[float]:
            return [float(page.locator(f"#lambda-{d} input[type=number]").input_value()) for d in dims]

        assert weights() == [0.34, 0.33, 0.33]
        # Move one slider: the others rescale so that λ stays on the simplex.
        track = page.locator("#lambda-concise input[type=range]").bounding_box()
        page.mouse.click(track["x"] + 0.8 * track["width"], track["y"] + track["height"] / 2)
        page.wait_for_function("document.querySelector('#lambda-detailed input[type=number]').value !== '0.33'")
        moved = weights()
        assert abs(sum(moved) - 1) < 1e-6 and moved[0] > 0.7 and moved[1] == pytest.approx(moved[2], abs=0.011)
        # Click the triangle's bottom-right corner: λ = only polite.
        picker = page.locator("#triangle img")
        picker.scroll_into_view_if_needed()
        box = picker.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 264 / 300, box["y"] + box["height"] * 246 / 300)
        page.wait_for_function("document.querySelector('#lambda-polite input[type=number]').value > 0.8")
        assert weights()[2] > 0.8

        page.locator("#prompt textarea").fill("Tell me about Mars.")
        answers = {}
        for i, d in enumerate(dims):  # the vertex presets, one generation each (same seed)
            page.locator(f"#preset-{i}").click()
            page.wait_for_function(f"document.querySelector('#lambda-{d} input[type=number]').value == 1")
            page.locator("#generate").click()
            page.get_by_text(f"answer {i + 1}: done").wait_for(timeout=90_000)
            assert f"{d}=1.00" in page.locator("#status").inner_text()
            answers[d] = page.locator("#response textarea").input_value()
            assert answers[d]
        assert len(set(answers.values())) >= 2, answers  # the text changes with λ
        assert "λ-adapters" in page.locator("#system-line textarea").input_value()

        page.get_by_role("tab", name="Side by side").click()
        page.locator("#generate-side").click()
        columns = [_settled(lambda i=i: page.locator(f"#side-response-{i} textarea").input_value()) for i in range(4)]
        assert [c.splitlines()[0] for c in columns] == [
            "[concise=1.00 detailed=0.00 polite=0.00]", "[concise=0.00 detailed=1.00 polite=0.00]",
            "[concise=0.00 detailed=0.00 polite=1.00]", "[concise=0.34 detailed=0.33 polite=0.33]"]
        assert len({c.split("\n", 1)[1] for c in columns}) >= 2, columns

        page.get_by_role("tab", name="Steer").click()
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("LAMBDA_DPO_SCREENSHOT"):  # how docs/images/playground.png is made
            shutil.copy(shot, Path(os.environ["LAMBDA_DPO_SCREENSHOT"]))
        browser.close()
