"""A small server speaking the part of vLLM's OpenAI-compatible API a served teacher uses,
over a Hugging Face causal LM on the CPU: ``GET /v1/models``, ``POST /tokenize`` and
``POST /v1/completions`` with ``prompt_logprobs`` (the k best log-probs per prompt token
plus the token itself, with vLLM's 1-based ranks; ``max_logprobs`` caps k with vLLM's
error message). For tests only.

    python tests/prompt_logprob_server.py MODEL_DIR [--port 0] [--max-logprobs 20]

prints ``listening on PORT`` once ready. ``POST /control`` with JSON changes behaviour at
run time: ``delay`` (seconds before each completion), ``fail_next`` (answer that many
completions with HTTP 503), ``exit_after`` (exit the process on the completion after that
many more), ``prompt_logprobs`` (false: ignore the field, as a plain OpenAI server does),
``tokenize`` (false: no /tokenize endpoint). ``GET /control`` reports the counters
(``completions``: requests, ``prompts``: rows scored).
``--api-key KEY`` answers the API's routes with HTTP 401 unless a request carries
``Authorization: Bearer KEY``, as ``vllm serve --api-key`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import transformers


class State:
    def __init__(self, model_dir: str, max_logprobs: int) -> None:
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.name = os.path.basename(os.path.normpath(model_dir))
        self.max_logprobs = max_logprobs
        self.settings = {
            "delay": 0.0,
            "fail_next": 0,
            "exit_after": None,
            "prompt_logprobs": True,
            "tokenize": True,
        }
        self.completions = 0
        self.prompts = 0  # rows scored
        self.lock = threading.Lock()

    def prompt_logprobs(self, ids: list[int], k: int) -> list[dict | None]:
        with torch.inference_mode():
            logits = self.model(torch.tensor([ids])).logits[0].float()
        log_p = torch.log_softmax(logits, dim=-1)
        out: list[dict | None] = [None]
        for j in range(1, len(ids)):
            row = log_p[j - 1]
            best = row.topk(k)
            entry = {
                str(int(t)): {"logprob": float(v), "rank": r + 1, "decoded_token": ""}
                for r, (v, t) in enumerate(zip(best.values, best.indices, strict=True))
            }
            own = ids[j]
            if str(own) not in entry:
                rank = int((row > row[own]).sum()) + 1
                entry[str(own)] = {"logprob": float(row[own]), "rank": rank, "decoded_token": ""}
            out.append(entry)
        return out


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def refused(self) -> bool:
        """An API route without the server's key: answered 401, as vLLM does."""
        key = self.state.api_key
        if key is None or self.path == "/control":
            return False
        if self.headers.get("Authorization") == f"Bearer {key}":
            return False
        self.reply(401, {"error": "Unauthorized"})
        return True

    def do_GET(self) -> None:
        s = self.state
        if self.refused():
            return
        if self.path == "/v1/models":
            model = {"id": s.name, "object": "model", "max_model_len": 256}
            self.reply(200, {"object": "list", "data": [model]})
        elif self.path == "/control":
            self.reply(200, {"completions": s.completions, "prompts": s.prompts, **s.settings})
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        s = self.state
        body = self.body()
        if self.refused():
            return
        if self.path == "/control":
            s.settings.update(body)
            self.reply(200, s.settings)
        elif self.path == "/tokenize" and s.settings["tokenize"]:
            special = body.get("add_special_tokens", True)
            tokens = s.tokenizer(body["prompt"], add_special_tokens=special)["input_ids"]
            self.reply(200, {"tokens": tokens, "count": len(tokens), "max_model_len": 256})
        elif self.path == "/v1/completions":
            self.complete(body)
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def complete(self, body: dict) -> None:
        s = self.state
        with s.lock:
            s.completions += 1
            settings = dict(s.settings)
            if settings["exit_after"] is not None:
                if settings["exit_after"] <= 0:
                    os._exit(1)  # a killed server: the connection drops, nothing answers
                s.settings["exit_after"] -= 1
            failing = settings["fail_next"] > 0
            if failing:
                s.settings["fail_next"] -= 1
        time.sleep(settings["delay"])
        if failing:
            self.reply(503, {"error": {"message": "the engine is overloaded"}})
            return
        k = body.get("prompt_logprobs")
        if k is not None and k > s.max_logprobs:
            message = (
                f"Requested prompt logprobs of {k}, which is greater than max allowed: "
                f"{s.max_logprobs}"
            )
            self.reply(400, {"object": "error", "message": message, "code": 400})
            return
        prompts = body["prompt"]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        with s.lock:
            s.prompts += len(prompts)
        vocab = s.model.config.vocab_size
        outside = [t for ids in prompts for t in ids if not 0 <= t < vocab]
        if outside:
            message = f"Token id {outside[0]} is out of vocabulary"
            self.reply(400, {"object": "error", "message": message, "code": 400})
            return
        choices = []
        for index, ids in enumerate(prompts):
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": "length"}
            if k is not None and settings["prompt_logprobs"]:
                choice["prompt_logprobs"] = s.prompt_logprobs(ids, k)
            choices.append(choice)
        self.reply(200, {"object": "text_completion", "model": s.name, "choices": choices})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-logprobs", type=int, default=20)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    Handler.state = State(args.model_dir, args.max_logprobs)
    Handler.state.api_key = args.api_key
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
