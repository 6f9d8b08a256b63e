"""`lambda-dpo playground --model DIR`: a local web page to steer a trained model by λ (Gradio).

Gradio is the ecosystem's standard for model demos (Hugging Face Spaces, LLaMA-Factory's LlamaBoard); it is an
optional extra (``pip install 'lambda-dpo[playground]'``). The page binds 127.0.0.1 unless ``--host`` says otherwise,
and needs no network: Gradio's fonts are served by the package itself and its analytics are switched off.

What it shows, all read from the model's ``lambda_dpo.json``:

- one slider per dimension that always stays on the simplex: moving one rescales the others to fill the rest;
  for three dimensions a triangle picker (click a point, its barycentric coordinates are λ); presets at every vertex
  and the centre;
- the exact system line the model sees at that λ, to copy into any server (vLLM, TGI, an OpenAI-compatible API);
- streamed generation, and a side-by-side tab that answers one prompt at 2–4 λ in one batch with one seed;
- generation settings: temperature, top-p, max new tokens, seed, greedy.

The pure parts (:func:`rebalance`, :func:`from_triangle`, :func:`triangle_image`, :func:`system_line`) carry the
logic and are tested without a browser; ``tests/test_playground.py`` also drives the page in headless Chromium.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

TRIANGLE_SIZE = 300  # pixels of the square image that holds the three-dimension picker
_MARGIN = 34


# ------------------------------------------------------------------------------------------------ the simplex
def on_simplex(values: Sequence[float]) -> list[float]:
    """``values`` clipped at 0, scaled to sum to 1, rounded to two decimals (the λ line's precision) so that the
    rounded weights still sum to exactly 1 (largest remainders get the leftover hundredths)."""
    clipped = [max(0.0, float(v)) if math.isfinite(float(v)) else 0.0 for v in values]
    total = sum(clipped)
    if total <= 0:
        clipped, total = [1.0] * len(values), float(len(values))
    hundredths = [100 * v / total for v in clipped]
    floors = [math.floor(h) for h in hundredths]
    for i in sorted(range(len(values)), key=lambda i: floors[i] - hundredths[i])[: 100 - sum(floors)]:
        floors[i] += 1
    return [f / 100 for f in floors]


def rebalance(values: Sequence[float], changed: int) -> list[float]:
    """The simplex point after the user set ``values[changed]``: that weight is kept (clipped to [0, 1]) and the
    others are rescaled to share what is left in their current proportions (equally when they are all 0)."""
    kept = min(1.0, max(0.0, float(values[changed])))
    others = [max(0.0, float(v)) for i, v in enumerate(values) if i != changed]
    share = sum(others)
    rest = [(1 - kept) * (v / share if share > 0 else 1 / len(others)) for v in others] if others else []
    full = rest[:changed] + [kept] + rest[changed:]
    rounded = on_simplex(full)
    # Rounding must not move the weight the user just set; the others absorb the difference.
    if others and abs(rounded[changed] - round(kept, 2)) > 1e-9:
        delta = rounded[changed] - round(kept, 2)
        rounded[changed] = round(kept, 2)
        j = max((i for i in range(len(full)) if i != changed), key=lambda i: rounded[i])
        rounded[j] = round(rounded[j] + delta, 2)
    return rounded


def presets(dimensions: Sequence[str]) -> dict[str, list[float]]:
    """Button label → λ: every vertex ("only <d>") and the centre."""
    m = len(dimensions)
    out = {f"only {d}": [1.0 if j == i else 0.0 for j in range(m)] for i, d in enumerate(dimensions)}
    out["centre"] = on_simplex([1.0] * m)
    return out


def _vertices(size: int = TRIANGLE_SIZE) -> list[tuple[float, float]]:
    """Pixel positions of the three corners: dimension 0 at the top, 1 bottom left, 2 bottom right."""
    side = size - 2 * _MARGIN
    height = side * math.sqrt(3) / 2
    top = (size - height) / 2
    return [(size / 2, top), (_MARGIN, top + height), (size - _MARGIN, top + height)]


def from_triangle(x: float, y: float, size: int = TRIANGLE_SIZE) -> list[float]:
    """λ of the pixel (x, y) of the triangle picker: its barycentric coordinates, a click outside the triangle
    brought onto it by clipping its negative coordinates, on the simplex with two decimals."""
    (x0, y0), (x1, y1), (x2, y2) = _vertices(size)
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    a = ((y1 - y2) * (x - x2) + (x2 - x1) * (y - y2)) / det
    b = ((y2 - y0) * (x - x2) + (x0 - x2) * (y - y2)) / det
    return on_simplex([a, b, 1 - a - b])


def triangle_image(weights: Sequence[float], dimensions: Sequence[str], size: int = TRIANGLE_SIZE):
    """The picker as a PIL image: the triangle, its corners labelled with the dimensions, a dot at λ."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    corners = _vertices(size)
    draw.polygon(corners, fill=(238, 242, 255), outline=(79, 70, 229), width=2)
    for i in range(1, 4):  # grid lines at λ_d = 0.25, 0.5, 0.75 towards each corner
        t = i / 4
        for d in range(3):
            a, b, c = corners[d], corners[(d + 1) % 3], corners[(d + 2) % 3]
            p = (b[0] + t * (a[0] - b[0]), b[1] + t * (a[1] - b[1]))
            q = (c[0] + t * (a[0] - c[0]), c[1] + t * (a[1] - c[1]))
            draw.line([p, q], fill=(199, 210, 254), width=1)
    for i, ((cx, cy), name) in enumerate(zip(corners, dimensions)):
        half = draw.textlength(name) / 2  # keep every label inside the image, centred on its corner if it can be
        x = min(max(cx, half + 2), size - half - 2)
        draw.text((x, cy - 8) if i == 0 else (x, cy + 8), name, fill=(30, 27, 75), anchor="mb" if i == 0 else "mt")
    x = sum(w * c[0] for w, c in zip(weights, corners))
    y = sum(w * c[1] for w, c in zip(weights, corners))
    draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=(220, 38, 38), outline="white", width=2)
    return image


def system_line(metadata: Mapping[str, Any], weights: Mapping[str, float], system: str | None = None) -> str:
    """The system message the model sees at ``weights`` (with the user's own system text after the λ line), or
    how λ reaches a model that does not read it as text."""
    from lambda_dpo.conditioning import render_lambda, with_conditioning
    from lambda_dpo.generation import text_conditioned

    if not metadata.get("condition_on_lambda", True):
        return system or "(this model is not conditioned on λ: it answers the same at every λ)"
    if not text_conditioned(metadata):
        return ("(no λ line: this model reads λ through its λ-adapters; `lambda-dpo export --lambda …` merges one λ "
                "into plain weights that any server runs)" + (f"\n{system}" if system else ""))
    return with_conditioning(system, render_lambda(weights, metadata["dimensions"], metadata["conditioning_template"]))


# ------------------------------------------------------------------------------------------------ the page
def build_app(model, tokenizer, metadata: Mapping[str, Any], model_dir: str):
    """The playground as a ``gradio.Blocks`` (not launched)."""
    import gradio as gr

    from lambda_dpo.conditioning import parse_lambda
    from lambda_dpo.generation import generate, stream_response

    dimensions = list(metadata["dimensions"])
    m = len(dimensions)
    start = on_simplex([1.0] * m)

    def weights_of(values) -> dict[str, float]:
        return dict(zip(dimensions, on_simplex(values)))

    def view(values, system):
        """Every output that shows λ: the sliders, the system line, the triangle (three dimensions only)."""
        values = on_simplex(values)
        shown = [*values, system_line(metadata, weights_of(values), system)]
        return shown + ([triangle_image(values, dimensions)] if m == 3 else [])

    def settings(temperature, top_p, max_new_tokens, seed, greedy) -> dict[str, Any]:
        if not greedy and not temperature > 0:
            raise gr.Error("temperature must be > 0 when sampling (or tick greedy)")
        return {"max_new_tokens": int(max_new_tokens), "do_sample": not greedy, "temperature": float(temperature),
                "top_p": float(top_p), "seed": int(seed)}

    def stream(prompt, system, count, *rest) -> Iterator[tuple[str, str, int]]:
        """(response so far, status line, answer number): the status says when an answer is complete."""
        values, generation = rest[:m], settings(*rest[m:])
        if not prompt or not prompt.strip():
            raise gr.Error("the prompt is empty; type the text to answer")
        count, weights, started, text = count + 1, weights_of(values), time.perf_counter(), ""
        at = " ".join(f"{d}={w:.2f}" for d, w in weights.items())
        yield "", f"answer {count}: generating at {at} …", count
        for text in stream_response(model, tokenizer, metadata, prompt, weights, system=system or None,
                                    **generation):
            yield text, f"answer {count}: generating at {at} …", count
        seconds = time.perf_counter() - started
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        yield text, f"answer {count}: done, {tokens} tokens in {seconds:.2f} s at {at}", count

    def side_by_side(prompt, system, *rest):
        texts, generation = rest[:4], settings(*rest[4:])
        if not prompt or not prompt.strip():
            raise gr.Error("the prompt is empty; type the text to answer")
        chosen = [(i, t) for i, t in enumerate(texts) if t and t.strip()]
        if not chosen:
            raise gr.Error("give at least one λ, e.g. " + ",".join(f"{d}={1 / m:.2f}" for d in dimensions[:2]))
        try:
            lambdas = [parse_lambda(t, dimensions, normalize=True) for _, t in chosen]
        except ValueError as e:
            raise gr.Error(str(e)) from None
        answers = generate(None, prompt, lambdas, model=model, tokenizer=tokenizer, metadata=metadata,
                           system=system or None, **generation)
        out = [""] * 4
        for (i, _), weights, (answer,) in zip(chosen, lambdas, answers):
            line = " ".join(f"{d}={w:.2f}" for d, w in weights.items())
            out[i] = f"[{line}]\n{answer}"
        return out

    steered = metadata.get("condition_on_lambda", True)
    title = (f"## λ-DPO playground: `{os.path.basename(os.path.normpath(model_dir))}`\n"
             f"Dimensions, in order: {', '.join(f'`{d}`' for d in dimensions)} · conditioning: "
             f"`{metadata.get('conditioning', 'text') if steered else 'none (not conditioned on λ)'}`")
    with gr.Blocks(title="λ-DPO playground", analytics_enabled=False) as app:
        gr.Markdown(title)
        with gr.Row():
            prompt = gr.Textbox(label="prompt", lines=2, scale=3, elem_id="prompt")
            system = gr.Textbox(label="your own system text (optional, after the λ line)", lines=2, scale=2,
                                elem_id="system")
        with gr.Tab("Steer", id="steer"):
            with gr.Row():
                with gr.Column(scale=1):
                    sliders = [gr.Slider(0, 1, value=v, step=0.01, label=f"λ {d}", elem_id=f"lambda-{d}")
                               for d, v in zip(dimensions, start)]
                    with gr.Row():
                        preset_buttons = {label: gr.Button(label, size="sm", elem_id=f"preset-{i}")
                                          for i, label in enumerate(presets(dimensions))}
                    if m == 3:
                        gr.Markdown("Or click in the triangle: each corner is one dimension.")
                    triangle = (gr.Image(triangle_image(start, dimensions), type="pil", interactive=False,
                                         show_label=False, elem_id="triangle",
                                         height=TRIANGLE_SIZE, width=TRIANGLE_SIZE, buttons=[])
                                if m == 3 else None)
                with gr.Column(scale=2):
                    line = gr.Textbox(system_line(metadata, weights_of(start)), label="system message the model sees",
                                      interactive=False, buttons=["copy"], elem_id="system-line")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    answer = gr.Textbox(label="response", lines=6, interactive=False, elem_id="response")
                    status = gr.Markdown("", elem_id="status")
                    answers = gr.State(0)  # how many answers this page has asked for (numbers the status line)
        with gr.Tab("Side by side", id="side"):
            gr.Markdown("One prompt, 2–4 λ, one batch and one seed: only λ differs between the columns.")
            defaults = [", ".join(f"{d}={w:.2f}" for d, w in zip(dimensions, v)) for v in presets(dimensions).values()]
            with gr.Row():
                lambda_boxes = [gr.Textbox(defaults[i] if i < len(defaults) else "", label=f"λ {i + 1}",
                                           elem_id=f"side-lambda-{i}") for i in range(4)]
            run_side = gr.Button("Generate side by side", variant="primary", elem_id="generate-side")
            with gr.Row():
                side_answers = [gr.Textbox(label=f"response {i + 1}", lines=6, interactive=False,
                                           elem_id=f"side-response-{i}") for i in range(4)]
        with gr.Accordion("generation settings", open=False):
            with gr.Row():
                temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p")
                max_new_tokens = gr.Slider(1, 1024, value=128, step=1, label="max new tokens")
                seed = gr.Number(0, precision=0, label="seed")
                greedy = gr.Checkbox(False, label="greedy")
        generation_inputs = [temperature, top_p, max_new_tokens, seed, greedy]

        shown = [*sliders, line] + ([triangle] if triangle is not None else [])
        for i, slider in enumerate(sliders):
            slider.release(lambda *v, i=i: view(rebalance(v[:m], i), v[m]), [*sliders, system], shown)
        for button, point in zip(preset_buttons.values(), presets(dimensions).values()):
            button.click(lambda s, v=point: view(v, s), [system], shown)
        if triangle is not None:
            def picked(s, evt):
                return view(from_triangle(*evt.index), s)
            # Gradio finds the event-data argument by its annotation, which must be the class (not a string).
            picked.__annotations__["evt"] = gr.SelectData
            triangle.select(picked, [system], shown)
        system.change(lambda *v: view(v[:m], v[m]), [*sliders, system], shown)
        run.click(stream, [prompt, system, answers, *sliders, *generation_inputs], [answer, status, answers])
        prompt.submit(stream, [prompt, system, answers, *sliders, *generation_inputs], [answer, status, answers])
        run_side.click(side_by_side, [prompt, system, *lambda_boxes, *generation_inputs], side_answers)
    return app
