"""Caption augmentation: generation against a local chat-completions server, selection, sampling."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from coattn.tools.augment import ChatClient, generate, main, parse_paraphrases
from coattn.tools.synth import main as synth
from data_modules import ClothoDataModule
from data_modules.augmentation import load_augmentation_file, ngram_embed, read_paraphrase_jsonl, select_top_k


class FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions server on 127.0.0.1. Paraphrases = the caption with a
    suffix, plus one off-topic text; plants faults on demand."""

    # consumed in order: "429" (Retry-After: 1), "500", "401", "slow" (answers after 2 s), "garbage"
    # (content without JSON), "badbody" (a body that is not JSON), "nochoices", "skip-last"
    faults: list[str] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                             "t": time.monotonic(), "retry": self.headers.get("x-stainless-retry-count")})
        fault = FakeLLM.faults.pop(0) if FakeLLM.faults else ""
        if fault in ("429", "500", "401"):
            self.send_response(int(fault))
            self.send_header("Content-Type", "application/json")
            if fault == "429":
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "busy"}}')
            return
        if fault == "slow":
            time.sleep(4.0)  # the client gave up on this attempt long ago (timeout 1.5 s)
        user = body["messages"][-1]["content"]
        caps = [re.sub(r"^\d+\. ", "", line) for line in user.splitlines()]
        n = int(re.search(r"write (\d+) paraphrases", body["messages"][0]["content"]).group(1))
        answer = {str(i + 1): [f"{c} (version {k})" for k in range(n - 1)] + ["an unrelated tractor engine"]
                  for i, c in enumerate(caps)}
        if fault == "skip-last" and len(caps) > 1:
            answer.pop(str(len(caps)))
        content = "Sure!" if fault == "garbage" else "```json\n" + json.dumps(answer) + "\n```"
        reply = {"choices": [] if fault == "nochoices" else [{"index": 0, "message": {"role": "assistant",
                                                                                       "content": content}}]}
        data = b"<html>502 from a proxy</html>" if fault == "badbody" else json.dumps(reply).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # "slow": the client closed the connection
            pass

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture()
def server():
    FakeLLM.faults, FakeLLM.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)  # loopback only, ephemeral port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


CAPTIONS = [f"A dog barks {k} times near a road." for k in range(5)]


def gaps() -> list[float]:
    return [b["t"] - a["t"] for a, b in zip(FakeLLM.seen, FakeLLM.seen[1:])]


def test_generate_batches_retries_and_resumes(server, tmp_path):
    FakeLLM.faults = ["429", "garbage", "", "skip-last"]
    client = ChatClient(server, "fake-model", api_key="sk-test", max_retries=3)
    cache = tmp_path / "cache.jsonl"
    out = generate(CAPTIONS, client, cache, n=3, batch_size=2, progress=False)
    assert set(out) == set(CAPTIONS) and all(len(v) == 3 for v in out.values())
    # 3 batches of <= 2 captions; +1 retry after the 429, +1 re-ask after the garbage answer,
    # +1 single-caption request for the caption the model skipped
    assert client.requests == len(FakeLLM.seen) == 6
    assert 1.0 <= gaps()[0] < 3.0 and FakeLLM.seen[1]["retry"] == "1"  # the client waited the Retry-After: 1
    assert gaps()[1] < 1.0 and FakeLLM.seen[2]["retry"] == "0"  # an unusable answer is asked again at once
    assert all(s["auth"] == "Bearer sk-test" and s["path"] == "/v1/chat/completions" for s in FakeLLM.seen)
    assert FakeLLM.seen[0]["body"]["model"] == "fake-model"
    assert len(cache.read_text().splitlines()) == 5
    # resumed: everything cached, only the new caption is asked for
    again = ChatClient(server, "fake-model")
    assert generate(CAPTIONS + ["A new caption."], again, cache, n=3, batch_size=2, progress=False).keys() \
        == set(CAPTIONS + ["A new caption."])
    assert again.requests == 1 and FakeLLM.seen[-1]["auth"] == "Bearer EMPTY"  # no key: the placeholder
    # a truncated last line (crash mid-write) is skipped, not fatal
    with open(cache, "a") as f:
        f.write('{"caption": "half')
    assert len(read_paraphrase_jsonl(cache)) == 6


def test_client_timeout_and_malformed_answers(server):
    FakeLLM.faults = ["slow", "badbody", "nochoices", ""]
    # timeout 1.5 s (not 0.5 s): on a loaded 2-core machine a normal answer of the local server can take
    # longer than 0.5 s; then an extra retry makes the request count below fail for the machine's load
    client = ChatClient(server, "m", api_key="sk-test", timeout=1.5, max_retries=3)
    got = client.complete([{"role": "system", "content": "write 2 paraphrases"}, {"role": "user", "content": "1. x"}],
                          lambda s: parse_paraphrases(s, 1))
    assert got == {1: ["x (version 0)", "an unrelated tractor engine"]}
    # the slow attempt timed out and the client retried it; the non-JSON body and the empty
    # choices were asked again
    assert client.requests == len(FakeLLM.seen) == 4
    assert [s["retry"] for s in FakeLLM.seen] == ["0", "1", "0", "0"]
    assert gaps()[0] >= 1.5  # timeout (1.5 s) + back-off before the retry


def test_client_gives_up_and_fails_fast_on_auth(server):
    FakeLLM.faults = ["500"] * 3
    client = ChatClient(server, "m", api_key="sk-test", max_retries=2)
    with pytest.raises(RuntimeError, match="giving up after 3 attempts: HTTP 500"):
        client.complete([{"role": "user", "content": "1. x"}])
    assert len(FakeLLM.seen) == 3 and gaps()[0] >= 0.375  # exponential back-off: 0.5 s x (0.75..1) first
    FakeLLM.faults = ["401"]
    with pytest.raises(RuntimeError, match="HTTP 401 \\(check the API key"):
        client.complete([{"role": "user", "content": "1. x"}])
    assert len(FakeLLM.seen) == 4  # an auth failure is not retried
    FakeLLM.faults = ["garbage"] * 3
    with pytest.raises(RuntimeError, match="no usable answer after 3 attempts: unparsable"):
        client.complete([{"role": "system", "content": "write 2 paraphrases"}, {"role": "user", "content": "1. x"}],
                        lambda s: parse_paraphrases(s, 1))
    with pytest.raises(RuntimeError, match="giving up after 1 attempts: APIConnectionError"):
        ChatClient("http://127.0.0.1:9/v1", "m", max_retries=0, timeout=2).complete([])


def test_parse_accepts_fences_and_lists():
    assert parse_paraphrases('```json\n{"1": ["a", " "], "2": ["b"]}\n```', 2) == {1: ["a"], 2: ["b"]}
    assert parse_paraphrases('[["a"], ["b", "c"]]', 2) == {1: ["a"], 2: ["b", "c"]}
    with pytest.raises(ValueError):
        parse_paraphrases("no json here", 1)


def test_select_top_k_keeps_the_closest():
    paras = {"A dog barks twice.": ["a dog barks twice", "A dog barks two times.", "An engine idles.",
                                    "A dog is barking twice.", ""]}
    got = select_top_k(paras, ngram_embed, k=2)["A dog barks twice."]
    assert {t for t, _ in got} == {"A dog is barking twice.", "A dog barks two times."}  # copy and "" dropped
    assert got[0][1] >= got[1][1] > 0.5
    assert select_top_k(paras, ngram_embed, k=5, min_score=0.5)["A dog barks twice."][-1][0] != "An engine idles."


def test_cli_generate_select_then_train_with_it(server, tmp_path, monkeypatch, capsys):
    root = tmp_path / "d"
    synth([str(root), "--n-train", "4", "--n-val", "1", "--n-eval", "1", "--seconds", "1"])
    monkeypatch.setenv("MY_KEY", "sk-env")
    out = tmp_path / "aug.json"
    args = [str(root / "clotho_captions_development.csv"), "--out", str(out), "--base-url", server,
            "--model", "m", "--api-key-env", "MY_KEY", "--n", "4", "--top-k", "2", "--encoder", "ngram",
            "--no-progress", "--batch-size", "8"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "kept 40" in printed.out  # 20 captions x top-2
    assert FakeLLM.seen[0]["auth"] == "Bearer sk-env" and len(FakeLLM.seen) == 3
    assert "sk-env" not in printed.out + printed.err + (tmp_path / "aug.json.cache.jsonl").read_text() \
        + out.read_text()  # the key is sent, never printed or written
    table = load_augmentation_file(out)
    assert len(table) == 20 and all(len(v) == 2 and "tractor" not in " ".join(v) for v in table.values())
    # (b) the cache is a paraphrase JSONL: selection alone reproduces the same file
    out2 = tmp_path / "aug2.json"
    assert main(args[:1] + ["--out", str(out2), "--paraphrases", str(out) + ".cache.jsonl", "--top-k", "2",
                            "--encoder", "ngram"]) == 0
    assert load_augmentation_file(out2) == table

    def train_captions(prob: float, seed: int = 0) -> list[str]:
        dm = ClothoDataModule(str(root), batch_size=4, seed=seed, augmentation_file=str(out), augment_prob=prob)
        return [c for b in dm.train_dataloader() for c in b["captions"]]

    originals = set(table)
    assert set(train_captions(0.0)) <= originals
    full = train_captions(1.0)
    assert all(c not in originals and any(c in table[o] for o in originals) for c in full)
    half = train_captions(0.5)
    assert 0 < sum(c in originals for c in half) < len(half)
    assert half == train_captions(0.5)  # deterministic under the seed
    dm = ClothoDataModule(str(root), eval_batch_size=2, augmentation_file=str(out), augment_prob=1.0)
    assert all(c in dm.split_captions("val")[0] for b in dm.val_dataloader() for c in b["captions"])
    assert torch.is_tensor(next(iter(dm.val_dataloader()))["audio"])


def test_augment_prob_needs_a_file():
    with pytest.raises(ValueError, match="augmentation_file"):
        ClothoDataModule("x", augment_prob=0.5)
