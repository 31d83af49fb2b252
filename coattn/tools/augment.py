"""``coattn augment``: paraphrase training captions with a language model, keep the closest ones.

    # (a) generate through any OpenAI-compatible chat-completions endpoint, then select
    export OPENAI_API_KEY=...            # the key is only ever read from the environment
    coattn augment data/demo/clotho_captions_development.csv --out data/demo/augmentation.json \\
        --base-url https://api.openai.com/v1 --model gpt-4o-mini --n 5 --top-k 3 --encoder roberta-base
    # (b) paraphrases made elsewhere (JSONL: {"caption": ..., "paraphrases": [...]}), select only
    coattn augment train.csv --paraphrases para.jsonl --out augmentation.json --encoder ngram

Then train with ``data.init_args.augmentation_file=augmentation.json`` and ``augment_prob=0.3``.

Generation sends ``--batch-size`` captions per request through the ``openai`` client, so any
OpenAI-compatible server works (OpenAI, vLLM, Ollama, ...): the client retries rate limits (429),
overload (5xx), timeouts and dropped connections with exponential back-off and honours the
server's Retry-After. An answer that arrives but is unusable (not JSON, no choices, no paraphrase
lists) is asked again. Every finished caption is appended to a JSONL cache (default
``<out>.cache.jsonl``) as soon as it arrives: an interrupted run resumes where it stopped and
never pays for a caption twice. At most ``--concurrency`` requests are in flight; Ctrl-C sends no
new one, waits for those (their answers are paid for: they are kept) and exits 130 with one line
(a second Ctrl-C abandons them). The key is read from an environment variable only
(``--api-key-env``) and never printed or written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

log = logging.getLogger("coattn.augment")

DEFAULT_PROMPT = (
    "You rewrite captions of audio recordings. For each numbered caption, write {n} paraphrases that "
    "describe exactly the same sounds, in the same order and with the same counts. Vary the words and "
    "the sentence structure; do not add, remove or reinterpret any sound. Answer with JSON only: an "
    "object mapping each caption number (as a string) to a list of {n} strings."
)
NO_KEY = "EMPTY"  # what a server without authentication is sent (the placeholder vLLM's docs use)


class ChatClient:
    """Chat completions through the ``openai`` client (module docstring), counting HTTP attempts.

    Args:
        base_url: API root of an OpenAI-compatible server, e.g. ``https://api.openai.com/v1``.
        model: model name the server knows.
        api_key: the key (from the environment); None sends ``NO_KEY``.
        timeout: seconds per HTTP attempt.
        max_retries: HTTP retries by the client (429, 408, 409, 5xx, timeouts, connection errors:
            0.5 s doubling to 8 s, or the server's Retry-After up to 120 s), and separately re-asks
            after unusable answers.
        temperature: sampling temperature of the paraphrases.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, temperature: float = 0.9):
        import openai

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_retries, self.temperature = model, max_retries, temperature
        self.requests = 0  # HTTP attempts, retries included (reported in the summary)
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._count]})
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or NO_KEY, timeout=timeout,
                                    max_retries=max_retries, http_client=http)

    def _count(self, request) -> None:
        self.requests += 1

    def complete(self, messages: list[dict], parse=lambda s: s):
        """The first choice's content passed through ``parse``; an unusable answer is asked again."""
        import openai

        problem, reply = "", None
        for attempt in range(self.max_retries + 1):
            try:
                reply = self.client.chat.completions.create(model=self.model, messages=messages,
                                                            temperature=self.temperature)
                content = reply.choices[0].message.content
            except openai.APIStatusError as exc:  # the client retried what can be retried
                hint = " (check the API key in the environment variable)" if exc.status_code in (401, 403) else ""
                tries = f"giving up after {self.max_retries + 1} attempts: " if exc.status_code >= 408 else ""
                raise RuntimeError(f"{self.url}: {tries}HTTP {exc.status_code}{hint}: {str(exc)[:300]}") from None
            except openai.APIConnectionError as exc:  # timeouts too
                raise RuntimeError(f"{self.url}: giving up after {self.max_retries + 1} attempts: "
                                   f"{type(exc).__name__}: {exc}") from None
            except ValueError as exc:  # the body is not JSON
                problem = f"malformed response ({type(exc).__name__}: {exc})"
            except (AttributeError, IndexError, TypeError):  # JSON, but no choice with a message
                problem = f"unexpected response shape: {str(reply)[:200]}"
            else:
                try:
                    return parse(content if isinstance(content, str) else "")
                except ValueError as exc:
                    problem = f"unparsable answer ({exc}): {str(content)[:200]!r}"
            log.warning("%s; asking again (%d/%d)", problem, attempt + 1, self.max_retries)
        raise RuntimeError(f"{self.url}: no usable answer after {self.max_retries + 1} attempts: {problem}")


def parse_paraphrases(content: str, count: int) -> dict[int, list[str]]:
    """{caption number (1-based): paraphrases} from a model answer (JSON, maybe in a code fence)."""
    match = re.search(r"[\[{].*[\]}]", content, re.S)
    if not match:
        raise ValueError("no JSON in the answer")
    obj = json.loads(match.group(0))
    if isinstance(obj, list):  # [[...], [...]] in caption order is accepted too
        obj = {str(i + 1): v for i, v in enumerate(obj)}
    if not isinstance(obj, dict):
        raise ValueError("answer is not a JSON object")
    out = {}
    for key, value in obj.items():
        if str(key).strip().isdigit() and 1 <= int(key) <= count and isinstance(value, list):
            paras = [v.strip() for v in value if isinstance(v, str) and v.strip()]
            if paras:
                out[int(key)] = paras
    if not out:
        raise ValueError("no usable paraphrase lists in the answer")
    return out


def generate(captions: list[str], client: ChatClient, cache: Path, n: int = 5, batch_size: int = 8,
             prompt: str = DEFAULT_PROMPT, concurrency: int = 1, progress: bool = True) -> dict[str, list[str]]:
    """Paraphrases of every caption, resuming from and appending to the JSONL ``cache``."""
    from tqdm import tqdm

    from data_modules.augmentation import read_paraphrase_jsonl

    done = read_paraphrase_jsonl(cache) if cache.is_file() else {}
    todo = [c for c in dict.fromkeys(captions) if c not in done]
    log.info("%d captions, %d cached in %s, %d to generate", len(set(captions)), len(set(captions) - set(todo)),
             cache, len(todo))
    system = prompt.replace("{n}", str(n))
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]

    def run(batch: list[str]) -> tuple[list[str], dict[int, list[str]]]:
        user = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(batch))
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return batch, client.complete(msgs, lambda s: parse_paraphrases(s, len(batch)))

    cache.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="paraphrasing", unit="caption", disable=not progress, file=sys.stderr)
    queue, width = deque(batches), max(1, concurrency)
    stop = _StopOnSigint()
    pool = ThreadPoolExecutor(width)
    pending: set = set()
    try:
        with open(cache, "a", encoding="utf-8") as f, stop:
            while True:
                # at most `concurrency` requests in flight: Ctrl-C then waits for those, never for the rest
                while queue and len(pending) < width and not stop.requested:
                    pending.add(pool.submit(run, queue.popleft()))
                if not pending:
                    break
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in finished:
                    batch, got = fut.result()  # an error: the finally below cancels the rest
                    for i, caption in enumerate(batch):
                        if i + 1 in got:
                            # one line per caption, flushed now: a crash loses at most the batches in flight
                            f.write(json.dumps({"caption": caption, "paraphrases": got[i + 1],
                                                "model": client.model}, ensure_ascii=False) + "\n")
                            done[caption] = got[i + 1]
                            bar.update(1)
                        elif len(batch) > 1:  # the model skipped it: ask again on its own
                            queue.appendleft([caption])
                        else:
                            log.warning("no paraphrases for %r; rerun to retry", caption)
                    f.flush()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    if stop.requested:
        raise Interrupted(str(cache), len(todo) - sum(c in done for c in todo), sum(c in done for c in todo))
    return {c: done[c] for c in captions if c in done}


class Interrupted(Exception):
    """Ctrl-C stopped ``generate`` after the requests in flight: (cache, captions left, answered this run)."""


class _StopOnSigint:
    """While active (main thread only): the first SIGINT sets ``requested`` (no new request is sent, the
    ones in flight are awaited and their answers kept); a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.requested, self._old = False, None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("coattn augment: Ctrl-C: sending no new request, waiting for the answers in flight (they are paid "
              "for; Ctrl-C again abandons them)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def read_captions(paths: list[str]) -> list[str]:
    """Captions from Clotho CSVs (caption_1..5), AudioCaps CSVs (caption) or text files (one per line)."""
    from data_modules.splits import read_csv_rows

    out: list[str] = []
    for p in paths:
        if p.endswith(".csv"):
            with open(p, "rb") as f:  # bad bytes are reported by read_csv_rows, naming the row
                header = f.readline().decode("utf-8-sig", errors="replace")
            cols = [c for c in (f"caption_{k}" for k in range(1, 6)) if c in header] or ["caption"]
            out += [row[c].strip() for _, row in read_csv_rows(p, cols) for c in cols if row[c].strip()]
        else:
            out += _read_text_lines(p)
    return list(dict.fromkeys(out))


def check_inputs(a: argparse.Namespace) -> None:
    """Every input file of the command is there and readable, before a caption is read or a request sent:
    otherwise one ``DataNotFoundError`` / ``DataError`` line naming the option and the file."""
    from coattn.errors import DataError, DataNotFoundError

    named = [("captions", p) for p in a.captions] + [("--paraphrases", p) for p in a.paraphrases or []]
    named += [("--prompt-file", a.prompt_file)] if a.prompt_file else []
    for option, path in named:
        if not Path(path).is_file():
            what = "a directory, not a file" if Path(path).is_dir() else "no such file"
            raise DataNotFoundError(f"{option} {path}: {what}")
    cache = Path(a.cache or a.out + ".cache.jsonl")
    if cache.exists() and not cache.is_file():
        raise DataError(f"--cache {cache}: a directory stands there; pass another --cache file")


def _read_text_lines(path: str) -> list[str]:
    from coattn.errors import DataError

    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text ({exc.reason} at byte {exc.start}): a caption "
                        "file is a CSV or plain text, one caption per line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_embed(name: str):
    """'ngram' (no model) or a Hugging Face id / local folder loaded as coattn's HFTextEncoder."""
    from data_modules.augmentation import mean_pooled, ngram_embed

    if name == "ngram":
        return ngram_embed
    from coattn.encoders.text import HFTextEncoder

    return mean_pooled(HFTextEncoder(model=name, max_length=64, freeze=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn augment", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captions", nargs="+", help="caption CSVs (Clotho or AudioCaps) or text files, one caption per line")
    p.add_argument("--out", required=True, help="augmentation file to write (JSON; data.init_args.augmentation_file)")
    g = p.add_argument_group("generation (a)")
    g.add_argument("--base-url", default="https://api.openai.com/v1", help="OpenAI-compatible API root")
    g.add_argument("--model", default="gpt-4o-mini")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    g.add_argument("--n", type=int, default=5, help="paraphrases requested per caption")
    g.add_argument("--batch-size", type=int, default=8, help="captions per request")
    g.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    g.add_argument("--prompt-file", help="system prompt text ({n} = paraphrases per caption)")
    g.add_argument("--temperature", type=float, default=0.9)
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    g.add_argument("--max-retries", type=int, default=5,
                   help="HTTP retries (back-off 0.5 s doubling, or the server's Retry-After) "
                        "and re-asks after unusable answers")
    g.add_argument("--cache", help="resumable JSONL cache (default: <out>.cache.jsonl)")
    g.add_argument("--no-progress", action="store_true")
    p.add_argument("--paraphrases", nargs="+", help="(b) JSONL files of paraphrases made elsewhere: no generation")
    s = p.add_argument_group("selection (c)")
    s.add_argument("--top-k", type=int, default=3, help="paraphrases kept per caption")
    s.add_argument("--min-score", type=float, default=-1.0, help="drop paraphrases below this cosine similarity")
    s.add_argument("--encoder", default="roberta-base",
                   help="sentence encoder: HF id or local folder (mean-pooled), or 'ngram' (model-free)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for name in ("httpx", "httpx2"):  # one line per request would drown the progress bar; retries still show
        logging.getLogger(name).setLevel(logging.WARNING)
    if a.n < 1 or a.batch_size < 1 or a.top_k < 1:
        p.error("--n, --batch-size and --top-k must be >= 1")

    from data_modules.augmentation import read_paraphrase_jsonl, select_top_k, write_augmentation_file

    check_inputs(a)
    captions = read_captions(a.captions)
    print(f"coattn augment: {len(captions)} distinct captions from {', '.join(a.captions)}", flush=True)
    t0 = time.perf_counter()
    if a.paraphrases:
        paras: dict[str, list[str]] = {}
        for path in a.paraphrases:
            for c, ps in read_paraphrase_jsonl(path).items():
                paras.setdefault(c, []).extend(ps)
        paras = {c: paras[c] for c in captions if c in paras}
        requests = 0
    else:
        key = os.environ.get(a.api_key_env)
        if not key:
            log.warning("$%s is not set: sending requests without an API key (placeholder %r)", a.api_key_env, NO_KEY)
        prompt = Path(a.prompt_file).read_text(encoding="utf-8") if a.prompt_file else DEFAULT_PROMPT
        client = ChatClient(a.base_url, a.model, key, a.timeout, a.max_retries, a.temperature)
        cache = Path(a.cache or a.out + ".cache.jsonl")
        try:
            paras = generate(captions, client, cache, a.n, a.batch_size, prompt, a.concurrency, not a.no_progress)
        except Interrupted as stop:
            where, left, answered = stop.args
            print(f"coattn augment: interrupted: {answered} captions answered in this run are kept in {where}; "
                  f"{left} left: rerun the same command to continue (no caption is asked for twice)",
                  file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print(f"coattn augment: interrupted: the answers in flight were abandoned; every earlier one is kept "
                  f"in {cache}: rerun the same command to continue", file=sys.stderr)
            return 130
        requests = client.requests
    missing = len(captions) - len(paras)
    selected = select_top_k(paras, make_embed(a.encoder), a.top_k, a.min_score)
    write_augmentation_file(a.out, selected, a.encoder, a.top_k)
    kept = [s for items in selected.values() for _, s in items]
    print(f"done in {time.perf_counter() - t0:.1f} s: {len(paras)} captions with paraphrases "
          f"({sum(map(len, paras.values()))} candidates, {requests} requests), kept {len(kept)} "
          f"(top-{a.top_k}, mean cosine {sum(kept) / max(1, len(kept)):.3f} under {a.encoder}) -> {a.out}")
    if missing:
        print(f"{missing} captions have no paraphrases yet; rerun the same command to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
