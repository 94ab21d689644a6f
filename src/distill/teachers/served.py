"""A teacher behind an inference server: the top-k log-probabilities of every prompt token,
read from an OpenAI-compatible completions endpoint (vLLM's ``prompt_logprobs``).

The protocol, one request per ``rows_per_request`` rows::

    POST {url}/completions  {"model": M, "prompt": [[ids...], ...], "max_tokens": 1,
                             "prompt_logprobs": k, "temperature": 1.0}
    -> choices[i].prompt_logprobs[j]: {token id: {"logprob": x, "rank": r}} for the
       distribution of token j given tokens < j (None for j = 0); the k best, plus the
       prompt's own token j wherever it is not among them.

Position t of a student row predicts the token after it, so the row is sent with one more
token (its last label) and entry t + 1 is read: the student's targets at t exactly.
Requests run ``concurrency`` at a time; a timeout, a refused connection, HTTP 429 or 5xx is
tried again ``retries`` times with exponential backoff, then raised as one line naming the
server and the last failure. A 4xx is a configuration error and is raised at once, with the
server's own message and, where known, the fix (vLLM caps ``prompt_logprobs`` at 20
unless started with ``--max-logprobs``).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill.batch import Batch, as_batch
from distill.errors import MissingDependency, ServedTeacherError
from distill.outputs import IGNORE_INDEX, TeacherOutput, TopK
from distill.teachers.base import Teacher
from distill.teachers.ensemble import Ensemble

PROBE_TEXT = "The quick brown fox jumps over the lazy dog, 12 times."
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
LIMIT = re.compile(r"greater than max allowed:?\s*(\d+)")


@dataclass
class Scores:
    """What a served teacher says of a batch: the top-k at every position (``topk``, the
    distribution of the next token) and the log-probability of the next token itself
    (``next_logprobs``; 0 where a row has no next token)."""

    topk: TopK
    next_logprobs: Tensor


class Served(Teacher):
    """A language-model teacher on an inference server (see the module docstring).

    ``url`` is the API root (``http://host:8000/v1``); ``model`` the served model's name
    (default: the first the server lists); ``top_k`` the log-probs kept per position;
    ``tokenizer`` the student's, checked against the server's by ``check``. Its answers are
    at temperature 1 (``fixed_temperature``): the server's log-probs, not a re-scaled
    top-k. Rows are the packed/padded rows distill's text data makes (``input_ids``,
    ``labels`` holding the next token, right padding in ``attention_mask``).
    """

    fixed_temperature = 1.0

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        top_k: int = 20,
        tokenizer: Any = None,
        rows_per_request: int = 8,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        api_key: str | None = None,
    ) -> None:
        if top_k < 1 or rows_per_request < 1 or concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError(
                "top_k, rows_per_request and concurrency must be >= 1, retries >= 0, timeout > 0"
            )
        try:
            import requests
        except ImportError:  # pragma: no cover - requests comes with the llm extra
            raise MissingDependency(
                "a served teacher needs requests: pip install 'distill[llm]'"
            ) from None
        self.requests = requests
        self.url = url.rstrip("/")
        self.model = model
        self.top_k = top_k
        self.tokenizer = tokenizer
        self.rows_per_request = rows_per_request
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.device = torch.device("cpu")
        self.requests_sent = 0
        self.max_model_len: int | None = None
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    # -- the teacher protocol -------------------------------------------------------------

    def to(self, device: torch.device | str) -> Served:
        self.device = torch.device(device)
        return self

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        return TeacherOutput(logits=None, topk=self.score(batch).topk)

    def score(self, batch: Batch) -> Scores:
        """The server's top-k and next-token log-probs for every position of ``batch``."""
        input_ids = batch.kwargs.get("input_ids", batch.args[0] if batch.args else None)
        if not isinstance(input_ids, Tensor):
            raise ServedTeacherError("a served teacher reads batches with input_ids")
        mask = batch.kwargs.get("attention_mask")
        ids = input_ids.detach().cpu()
        lengths = (
            ids.new_full((ids.shape[0],), ids.shape[1])
            if mask is None
            else mask.detach().cpu().sum(dim=1)
        )
        labels = batch.labels.detach().cpu() if batch.labels is not None else None
        prompts: dict[int, list[int]] = {}  # rows with a token (an empty row asks nothing)
        for row, length in enumerate(lengths.tolist()):
            if length:
                last = int(labels[row, length - 1]) if labels is not None else -1
                tokens = ids[row, :length].tolist()
                prompts[row] = [*tokens, last if last >= 0 else tokens[-1]]
        answers = self._ask_all(list(prompts.values())) if prompts else []
        answered = {
            row: (prompt, answer)
            for (row, prompt), answer in zip(prompts.items(), answers, strict=True)
        }
        return self._scores(answered, ids.shape, lengths)

    def measure(self, rows: Iterable[Any]) -> dict[str, float]:
        """Test metrics from the server alone, as ``Distiller.evaluate`` gives a model's:
        ``loss`` (mean next-token cross-entropy), ``accuracy`` (its top token is the next
        one) and ``examples`` (scored tokens), over the labelled positions of ``rows``."""
        return totals([self.tally(as_batch(raw)) for raw in rows])

    def tally(self, batch: Batch) -> tuple[float, int, int]:
        """(summed next-token NLL, right top tokens, scored tokens) over ``batch``."""
        scores = self.score(batch)
        labels = batch.labels
        assert labels is not None
        scored = labels != IGNORE_INDEX
        if batch.mask is not None:
            scored &= batch.mask.bool()
        nll = -float(scores.next_logprobs[scored].double().sum())
        right = int((scores.topk.ids[..., 0] == labels)[scored].sum())
        return nll, right, int(scored.sum())

    # -- checking the server once, before anything trains -------------------------------------

    def check(self) -> dict[str, Any]:
        """Ask the server once for everything a run relies on: the model it serves, its
        tokenizer (the same ids as the student's for a probe text, by ``/tokenize``) and
        ``top_k`` prompt log-probs per position. Returns what it found; raises
        ``ServedTeacherError`` naming what differs."""
        listed = self._send("GET", f"{self.url}/models", None)
        names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if self.model is None:
            if not names:
                raise ServedTeacherError(f"served teacher {self.url}: the server lists no model")
            self.model = names[0]
        elif names and self.model not in names:
            raise ServedTeacherError(
                f"served teacher {self.url}: it serves {names}, not {self.model!r}; set "
                "teacher.args.model to one of them"
            )
        info: dict[str, Any] = {"model": self.model, "tokenizer_checked": False}
        for entry in listed.get("data", []):
            if entry.get("id") == self.model and entry.get("max_model_len"):
                self.max_model_len = int(entry["max_model_len"])
        if self.tokenizer is not None:
            info["tokenizer_checked"] = self._check_tokenizer()
            probe = self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        else:
            probe = [1, 2, 3, 4]
        answer = self._ask_all([probe])[0]
        self._parse(probe, answer)  # raises on a missing or short prompt_logprobs
        info["max_model_len"] = self.max_model_len
        return info

    def _check_tokenizer(self) -> bool:
        """Compare the server's ids for a probe text with the student tokenizer's; False
        when the server has no ``/tokenize`` (vLLM and SGLang have it)."""
        root = re.sub(r"/v1$", "", self.url)
        try:
            answer = self._send(
                "POST",
                f"{root}/tokenize",
                {"model": self.model, "prompt": PROBE_TEXT, "add_special_tokens": False},
            )
        except ServedTeacherError as error:
            if "HTTP 404" in str(error):
                return False
            raise
        theirs = list(answer.get("tokens", []))
        ours = list(self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
        if answer.get("max_model_len"):
            self.max_model_len = int(answer["max_model_len"])
        if theirs != ours:
            raise ServedTeacherError(
                f"served teacher {self.url}: its tokenizer differs from the student's "
                f"({PROBE_TEXT!r} is {theirs[:8]}... there, {ours[:8]}... here); serve a "
                "model with the student's tokenizer (data.tokenizer), or use a live teacher "
                "with teacher.tokenizer for cross-tokenizer KD"
            )
        return True

    # -- requests ----------------------------------------------------------------------------

    def _ask_all(self, prompts: Sequence[list[int]]) -> list[dict[str, Any]]:
        """Every prompt's completion choice, in order; chunks sent ``concurrency`` at a time."""
        if self.max_model_len is not None and max(map(len, prompts)) > self.max_model_len:
            raise ServedTeacherError(
                f"served teacher {self.url}: rows of {max(map(len, prompts))} tokens (the row "
                f"and its next token) exceed the server's max_model_len {self.max_model_len}; "
                "lower data.seq_len or raise the server's --max-model-len"
            )
        step = self.rows_per_request
        chunks = [list(prompts[i : i + step]) for i in range(0, len(prompts), step)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="served")
        answers: list[dict[str, Any]] = []
        for chunk, reply in zip(chunks, self._pool.map(self._complete, chunks), strict=True):
            choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != len(chunk):
                raise ServedTeacherError(
                    f"served teacher {self.url}: {len(chunk)} prompts sent, "
                    f"{len(choices)} answers received"
                )
            answers += choices
        return answers

    def _complete(self, prompts: list[list[int]]) -> dict[str, Any]:
        body = {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 1.0,
            "prompt_logprobs": self.top_k,
        }
        return self._send("POST", f"{self.url}/completions", body)

    def _session(self) -> Any:
        if not hasattr(self._local, "session"):
            self._local.session = self.requests.Session()
        return self._local.session

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One request, tried again on a timeout, a lost connection, 429 or 5xx."""
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests_sent += 1
            try:
                reply = self._session().request(
                    method, url, json=body, headers=self.headers, timeout=self.timeout
                )
            except self.requests.Timeout:
                failure = f"no answer within {self.timeout:g} s"
                continue
            except self.requests.ConnectionError as error:
                failure = f"cannot connect ({type(error).__name__})"
                continue
            if reply.status_code in RETRY_STATUS:
                failure = f"HTTP {reply.status_code}: {server_message(reply)}"
                continue
            if reply.status_code >= 400:
                raise ServedTeacherError(self._refusal(url, reply))
            try:
                return reply.json()
            except ValueError:
                raise ServedTeacherError(
                    f"served teacher {url}: the answer is not JSON ({reply.text[:80]!r})"
                ) from None
        raise ServedTeacherError(
            f"served teacher {url}: no answer after {self.retries + 1} tries ({failure}); "
            "is the server running and reachable? Raise teacher.args.timeout or retries for "
            "a slow one"
        )

    def _refusal(self, url: str, reply: Any) -> str:
        message = server_message(reply)
        limit = LIMIT.search(message)
        if limit and "prompt" in message.lower():
            return (
                f"served teacher {url}: top_k {self.top_k} is above the server's limit of "
                f"{limit.group(1)} prompt log-probs; lower top_k (cache.top_k) or start vLLM "
                f"with --max-logprobs {self.top_k}"
            )
        if reply.status_code in (401, 403):
            why = (
                "the server refused the API key sent; check the key in the environment "
                "variable teacher.args.api_key_env names"
                if self.headers
                else "the server wants an API key; export it in an environment variable and "
                "name that variable in teacher.args.api_key_env"
            )
            return f"served teacher {url}: HTTP {reply.status_code}: {message}; {why}"
        return f"served teacher {url}: HTTP {reply.status_code}: {message}"

    # -- answers -----------------------------------------------------------------------------

    def _parse(self, prompt: list[int], choice: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(ids (n-1, k), logprobs (n-1, k), next-token logprobs (n-1,)) of one prompt."""
        entries = choice.get("prompt_logprobs")
        if not isinstance(entries, list) or len(entries) != len(prompt):
            raise ServedTeacherError(
                f"served teacher {self.url}: the answer holds no prompt_logprobs for the "
                "prompt (it is not a vLLM-compatible server, or too old); distill needs "
                "prompt log-probs per token (vLLM: the prompt_logprobs request field)"
            )
        ids = torch.empty(len(prompt) - 1, self.top_k, dtype=torch.long)
        logprobs = torch.empty(len(prompt) - 1, self.top_k, dtype=torch.float64)
        nexts = torch.empty(len(prompt) - 1, dtype=torch.float64)
        for j in range(1, len(prompt)):
            entry = entries[j]
            if not entry:
                raise ServedTeacherError(
                    f"served teacher {self.url}: no log-probs for prompt position {j} (vLLM "
                    "leaves out positions read from its prefix cache in some versions: start "
                    "it with --no-enable-prefix-caching)"
                )
            ranked = sorted(
                ((int(t), v) for t, v in entry.items()),
                key=lambda item: (item[1].get("rank") or math.inf, -item[1]["logprob"]),
            )
            if len(ranked) < self.top_k:
                raise ServedTeacherError(
                    f"served teacher {self.url}: asked for the top {self.top_k} log-probs per "
                    f"position, the server returned {len(ranked)}; it caps them (vLLM: start "
                    f"it with --max-logprobs {self.top_k}) or lower top_k"
                )
            best = ranked[: self.top_k]
            ids[j - 1] = torch.tensor([t for t, _ in best])
            logprobs[j - 1] = torch.tensor([v["logprob"] for _, v in best], dtype=torch.float64)
            own = entry.get(str(prompt[j]), entry.get(prompt[j]))  # type: ignore[call-overload]
            nexts[j - 1] = own["logprob"] if own is not None else -math.inf
        return ids, logprobs, nexts

    def _scores(
        self,
        answered: dict[int, tuple[list[int], dict[str, Any]]],
        shape: torch.Size,
        lengths: Tensor,
    ) -> Scores:
        """Every row's answers in place, a harmless uniform row at each padded position."""
        rows, length = shape
        k = self.top_k
        ids = torch.arange(k).expand(rows, length, k).clone()
        logprobs = torch.full((rows, length, k), -math.log(k + 1), dtype=torch.float64)
        tail = torch.full((rows, length), -math.log(k + 1), dtype=torch.float64)
        nexts = torch.zeros(rows, length, dtype=torch.float64)
        vocab = len(self.tokenizer) if self.tokenizer is not None else None
        for row, (prompt, answer) in answered.items():
            n = int(lengths[row])
            row_ids, row_logprobs, row_next = self._parse(prompt, answer)
            if vocab is not None and int(row_ids.max()) >= vocab:
                raise ServedTeacherError(
                    f"served teacher {self.url}: token id {int(row_ids.max())} is beyond the "
                    f"student tokenizer's {vocab} tokens; the server's vocabulary differs"
                )
            ids[row, :n], logprobs[row, :n], nexts[row, :n] = row_ids, row_logprobs, row_next
            kept = torch.logsumexp(row_logprobs, dim=-1)
            tail[row, :n] = torch.log((-torch.expm1(kept)).clamp(min=0.0))
        topk = TopK(ids, logprobs.float(), tail.float(), temperature=1.0).to(self.device)
        return Scores(topk, nexts.float().to(self.device))


def server_message(reply: Any) -> str:
    """The error message in a server's answer (OpenAI and vLLM shapes), else its text."""
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:200].strip() or reply.reason or "no message"
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message"):
            return str(body["message"])
    return str(body)[:200]


def totals(tallies: list[tuple[float, int, int]]) -> dict[str, float]:
    """``measure``'s metrics from (NLL, right, count) tallies."""
    nll, right, count = (sum(tally[i] for tally in tallies) for i in range(3))
    return {"loss": nll / max(1, count), "accuracy": right / max(1, count), "examples": count}


def pooled(measured: list[dict[str, float]]) -> dict[str, float]:
    """``measure``'s metrics over several parts of the rows, from each part's own."""
    return totals([(m["loss"] * m["examples"], m["accuracy"] * m["examples"], int(m["examples"]))
                   for m in measured])  # fmt: skip


class RoutedServed(Ensemble):
    """Served teachers routed row by row: each answers only the rows whose ``domain``
    names it (its index among ``members``), with its top-k at temperature 1; measured
    the same way, each row by its own server."""

    def __init__(self, members: Mapping[str, Served]) -> None:
        ks = {member.top_k for member in members.values()}
        if len(ks) > 1:
            raise ValueError(f"routed served members must answer the same top-k, got {sorted(ks)}")
        super().__init__(members, combine="route")
        self.top_k = ks.pop()

    def measure(self, rows: Iterable[Any]) -> dict[str, float]:
        """``Served.measure`` over rows of every member, each scored by its own."""
        found = []
        for raw in rows:
            batch = as_batch(raw)
            domain = batch.meta["domain"]
            for index, member in enumerate(self.members.values()):
                picked = (domain == index).nonzero().squeeze(1)
                if picked.numel():
                    found.append(member.tally(batch.select(picked)))  # type: ignore[attr-defined]
        return totals(found)


def is_remote(teacher: object) -> bool:
    """A teacher on inference servers (one, or routed): it answers with top-k log-probs,
    not a model's logits, and has no parameters here."""
    return isinstance(teacher, (Served, RoutedServed))
