"""``coattn serve``: a search page in the browser. Type a description, listen to the ranked clips.

    pip install 'coattn[app]'                       # Gradio, an optional extra
    coattn serve --model exported/demo --audio-dir data/demo/evaluation [--port 7860] [--top-k 5]
    # then open http://127.0.0.1:7860 (127.0.0.1 by default: --host 0.0.0.0 exposes it to the network)

The folder is indexed with ``coattn search``'s incremental index (encoded once, then only new or
changed files; ``--index-dir`` as there), once at start. Each query is scored like ``coattn search``
(``--mode rerank`` by default; a clip deleted since the start is left out, with one warning) and
the page shows, best first, each clip's rank, file name and
score (a cosine in [-1, 1]), an audio player, and, for a co-attention model, the word-by-frame
attention map of the query with that clip (``coattn.attention_maps``, the figures the training
callback logs). ``--model`` takes an exported folder (``coattn export``) or a Hub id;
``--ckpt_path`` a checkpoint of ``coattn fit``. A moment model (a moment checkpoint, or its exported
folder) also shows WHERE in each hit the query happens: the clip's waveform with the best window
shaded and its times (coattn/tools/serve_moments.py; ``--no-moments`` turns it off).

Why Gradio: it is the page library of the Hugging Face ecosystem coattn's models are shared on
(audio players, images and a queue for concurrent users come with it), maintained, and a pure
Python dependency; it is an extra, so the library and training never import it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("coattn.serve")
CSS = ".coattn-hit p { font-size: 1.05em; margin: 0 }"


def figure_to_array(fig) -> np.ndarray:
    """RGB pixels of a matplotlib Figure (drawn with Agg: no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def ranked_hits(model, index, query: str, top_k: int, mode: str, rerank_k: int, device: str,
                maps: bool = True, audio_dir: Path | None = None,
                gone: set[str] | None = None) -> tuple[dict, list[np.ndarray | None]]:
    """``coattn search``'s result for one query, and the attention map image of each hit (or None).

    With ``audio_dir``, a hit whose file was deleted since the index was built (its player would answer
    403) is left out, the next clips move up, and one warning per such file says so; ``gone`` keeps
    the files already found missing between queries."""
    from coattn.attention_maps import attention_examples, attention_figure
    from coattn.tools.search import search

    gone = set() if gone is None else gone
    while True:
        k = min(len(index.files), top_k + len(gone))
        [result] = search(model, index, [query], k, mode, rerank_k, device)
        new = [f for _, _, f in result["results"]
               if audio_dir is not None and f not in gone and not (audio_dir / f).is_file()]
        for f in new:
            log.warning("coattn serve: %s was deleted after the index was built: left out of the results "
                        "(restart coattn serve to re-index %s)", f, audio_dir)
        gone.update(new)
        if not new or k >= len(index.files):
            break
    kept = [(score, f) for _, score, f in result["results"] if f not in gone][:top_k]
    result["results"] = hits = [(r + 1, score, f) for r, (score, f) in enumerate(kept)]  # (rank, score, file)
    images: list[np.ndarray | None] = [None] * len(hits)
    if maps and model.has_pairwise and hits:
        rows = torch.tensor([index.files.index(f) for _, _, f in hits])
        examples = attention_examples(model, index.features.index(rows).to(device), [query] * len(hits),
                                      names=[f for _, _, f in hits])
        images = [figure_to_array(attention_figure(ex, f"{ex['fname']}: words x audio frames")) for ex in examples]
    return result, images


def build_app(model, index, audio_dir: Path, top_k: int = 5, mode: str = "rerank", rerank_k: int = 64,
              device: str = "cpu", maps: bool = True, source: str = "", moments=None):
    """The Gradio page (a ``gr.Blocks``): query box, then ``top_k`` result rows shown as hits arrive.
    ``moments``: a ``serve_moments.MomentView``; each hit then shows its best window on its waveform."""
    import gradio as gr

    def moment_cells(name: str | None, query: str) -> list:
        if moments is None or name is None:
            return [gr.Markdown("", visible=False), gr.Image(value=None, visible=False)]
        from coattn.tools.localize import clock

        image, best = moments.image(audio_dir / name, query)
        text = "no window" if best is None else f"moment **{clock(best[0])} - {clock(best[1])}** (score = {best[2]:.2f})"
        return [gr.Markdown(text, visible=True), gr.Image(value=image, visible=True)]

    kind = model.cascade.kind
    intro = (f"**{len(index.files)} clips** of `{audio_dir}` indexed ({index.stats.get('encoded', 0)} encoded now, "
             f"{index.stats.get('reused', 0)} reused). Model `{source}`, cascade `{kind}`, scoring "
             f"`{mode}`{f' (K={max(rerank_k, top_k)})' if mode == 'rerank' else ''}.")

    gone: set[str] = set()  # clips deleted since the index was built (warned once each)

    def run(query: str):
        query = (query or "").strip()
        if not query:
            return [gr.Markdown("Type a description of a sound.")] + [gr.Row(visible=False)] * top_k + \
                [gr.Markdown(), gr.Audio(), gr.Image(), *moment_cells(None, "")] * top_k
        result, images = ranked_hits(model, index, query, top_k, mode, rerank_k, device, maps, audio_dir, gone)
        hits = result["results"]
        status = (f"\"{query}\": {len(hits)} best of {len(index.files)} clips "
                  f"({result['cascade_passes']} cascade passes)")
        rows, cells = [], []
        for slot in range(top_k):
            if slot < len(hits):
                rank, score, name = hits[slot]
                rows.append(gr.Row(visible=True))
                cells += [gr.Markdown(f"**{rank}.** `{name}` &nbsp; score **{score:+.4f}**"),
                          gr.Audio(value=str(audio_dir / name), label=name),
                          gr.Image(value=images[slot], visible=images[slot] is not None), *moment_cells(name, query)]
            else:
                rows.append(gr.Row(visible=False))
                cells += [gr.Markdown(""), gr.Audio(value=None), gr.Image(value=None), *moment_cells(None, query)]
        return [gr.Markdown(status)] + rows + cells

    with gr.Blocks(title="coattn: search sounds by description") as app:
        gr.Markdown("# coattn: search sounds by description\n" + intro)
        with gr.Row():
            query = gr.Textbox(label="Describe a sound", placeholder="a dog barks while rain falls", elem_id="query",
                               scale=4)
            button = gr.Button("Search", variant="primary", elem_id="search", scale=1)
        status = gr.Markdown(elem_id="status")
        rows, cells = [], []
        for slot in range(top_k):
            with gr.Row(visible=False, elem_classes=["coattn-row"]) as row:
                with gr.Column(scale=2):
                    cells.append(gr.Markdown(elem_classes=["coattn-hit"]))
                    cells.append(gr.Audio(type="filepath", interactive=False, show_label=False))
                with gr.Column(scale=3):
                    cells.append(gr.Image(type="numpy", interactive=False, show_label=False,
                                          elem_classes=["coattn-map"]))
                    cells.append(gr.Markdown(visible=False, elem_classes=["coattn-window"]))
                    cells.append(gr.Image(type="numpy", interactive=False, show_label=False, visible=False,
                                          elem_classes=["coattn-moment"]))
            rows.append(row)
        outputs = [status, *rows, *cells]
        button.click(run, inputs=query, outputs=outputs)
        query.submit(run, inputs=query, outputs=outputs)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="exported model folder (`coattn export`) or Hugging Face Hub id")
    src.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", help="checkpoint of `coattn fit`")
    p.add_argument("--audio-dir", required=True, help="folder of audio files to search (recursive)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--top-k", type=int, default=5, help="clips shown per query (default 5)")
    p.add_argument("--mode", choices=["rerank", "exact"], default="rerank", help="as in `coattn search`")
    p.add_argument("--rerank-k", type=int, default=64, help="shortlist length of --mode rerank (default 64)")
    p.add_argument("--no-maps", action="store_true", help="no attention maps (faster pages)")
    p.add_argument("--no-moments", action="store_true",
                   help="a moment model: do not show the found moment on each hit's waveform")
    p.add_argument("--index-dir", default=None, help="where the index lives (as in `coattn search`)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per encoder batch while indexing")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.rerank_k < 1:
        p.error("--top-k and --rerank-k must be >= 1")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio as gr
    except ImportError:
        print("coattn serve: Gradio is not installed: pip install 'coattn[app]'", file=sys.stderr)
        return 2
    from coattn.errors import UserFacingError
    from coattn.tools.search import build_index, load_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    audio_dir = Path(args.audio_dir).expanduser().resolve()
    from coattn.tools.serve_moments import MomentView, load_moment_source

    try:
        mm = load_moment_source(args.ckpt_path, args.model)
        model = load_model(args.ckpt_path, args.model, device) if mm is None else mm.model.to(device).eval()
        index = build_index(model, audio_dir, args.index_dir, args.batch_size, device)
    except (FileNotFoundError, ValueError, UserFacingError) as exc:
        print(f"coattn serve: {exc}", file=sys.stderr)
        return 2
    moments = MomentView(mm, device) if mm is not None and not args.no_moments else None
    app = build_app(model, index, audio_dir, args.top_k, args.mode, args.rerank_k, device, not args.no_maps,
                    args.model or args.ckpt_path, moments)
    # system fonts: the default theme's Google fonts would be fetched by every browser from the internet
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    app.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(audio_dir)], theme=theme,
                       css=CSS, ssr_mode=False, show_error=True, footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
