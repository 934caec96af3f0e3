"""Oscar / VinVL demo: upload a photo, see the detector's boxes and tags, its caption, and ask a question.

    python demo/app.py --model oscar-base-coco-captioning --vqa-model oscar-base-vqa

The folders are any exported model folders (converter output, a recipe's `final/`) that carry
their detector (`detector/`). Without arguments the app reads `OSCAR_DEMO_MODEL` (and
`OSCAR_DEMO_VQA_MODEL`), which is how a Hub Space configures it. A VQA folder alone gives a
question-only demo.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from oscar_hf.processors.cli import load_pipeline, pipeline_task_of  # noqa: E402
from oscar_hf.processors.detection_oscar import load_rgb_image  # noqa: E402
from oscar_hf.processors.visualization import draw_regions  # noqa: E402


TITLE = "Oscar / VinVL: from a photo to a caption"


class Demo:
    """The pipelines behind the page: a captioner and/or a VQA model, each with its folder's detector."""

    def __init__(
        self, model: str | os.PathLike, vqa_model: str | os.PathLike | None = None, device: str | None = None
    ):
        self.captioner = self.vqa = None
        for folder in (model, vqa_model):
            if folder is None:
                continue
            task = pipeline_task_of(folder)
            if task == "oscar-captioning":
                self.captioner = load_pipeline(folder, task, device)
            elif task == "oscar-vqa":
                self.vqa = load_pipeline(folder, task, device)
            else:
                raise ValueError(
                    f"model folder {os.fspath(folder)!r} is an {task} folder; the demo shows captioning and VQA "
                    "folders (pass --model CAPTIONING_FOLDER and/or --vqa-model VQA_FOLDER)."
                )
        self.detector_of = self.captioner or self.vqa

    def describe(self, image: Image.Image | None) -> tuple[Image.Image | None, str, list[list[Any]]]:
        """Photo -> (drawing with boxes, tags and caption; the caption; a tag/score/box table)."""
        if image is None:
            return None, "Upload a photo first.", []
        image = load_rgb_image(image)
        regions = self.detector_of.detector([image])[0]
        caption = self.captioner(regions)[0]["generated_text"] if self.captioner is not None else ""
        drawn = draw_regions(image, regions["boxes"], regions.get("tags"), regions.get("scores"), text=caption)
        table = [
            [tag, round(float(score), 3), [round(float(v), 1) for v in box]]
            for tag, score, box in zip(
                regions.get("tags") or [], regions["scores"].tolist(), regions["boxes"].tolist()
            )
        ]
        return drawn, caption, table

    def answer(self, image: Image.Image | None, question: str) -> str:
        if self.vqa is None:
            return "This demo has no VQA model (start it with --vqa-model FOLDER)."
        if image is None or not question.strip():
            return "Upload a photo and type a question."
        answers = self.vqa(load_rgb_image(image), question=question, top_k=3)
        return ", ".join(f"{a['answer']} ({a['score']:.2f})" for a in answers)


def build_app(demo: Demo) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nThe detector finds regions and tags; Oscar reads them to caption the photo.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="pil", label="Photo", elem_id="photo")
                describe = gr.Button("Describe", variant="primary", elem_id="describe")
                question = gr.Textbox(label="Question", placeholder="what is on the table?", elem_id="question")
                ask = gr.Button("Ask", elem_id="ask")
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
            with gr.Column():
                drawn = gr.Image(type="pil", label="Regions, tags and caption", interactive=False, elem_id="drawn")
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                tags = gr.Dataframe(headers=["tag", "score", "box"], label="Regions", elem_id="regions")
        describe.click(demo.describe, inputs=photo, outputs=[drawn, caption, tags])
        photo.upload(demo.describe, inputs=photo, outputs=[drawn, caption, tags])
        ask.click(demo.answer, inputs=[photo, question], outputs=answer)
        question.submit(demo.answer, inputs=[photo, question], outputs=answer)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("OSCAR_DEMO_MODEL"), help="model folder ($OSCAR_DEMO_MODEL)")
    parser.add_argument(
        "--vqa-model", default=os.environ.get("OSCAR_DEMO_VQA_MODEL"), help="VQA folder ($OSCAR_DEMO_VQA_MODEL)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    if args.model is None and args.vqa_model is None:
        parser.error("pass --model FOLDER (or set OSCAR_DEMO_MODEL): an exported captioning or VQA folder.")
    if args.model is not None and not Path(args.model).is_dir():
        parser.error(f"--model {args.model!r} is not a folder; pass an exported model folder.")
    demo = Demo(args.model or args.vqa_model, args.vqa_model if args.model else None, device=args.device)
    build_app(demo).launch(server_name=args.host, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
