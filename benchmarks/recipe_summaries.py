"""Every shipped recipe at a tiny budget, on small real data, and the summary each gives:
the check that a change to the run layer leaves behaviour as it was (issue 37). Each
recipe runs in this process, one thread, with its models shrunk where they are large
(the same stand-ins as the tests: scikit-learn's digits in Fashion-MNIST's format,
MNIST-1D, CPython's help topics with a tiny WordPiece tokenizer, tiny Llamas and BERTs).

    python benchmarks/recipe_summaries.py --out /tmp/before.json
    python benchmarks/recipe_summaries.py --out /tmp/after.json --compare /tmp/before.json

Times (``seconds``, latencies, train time) are left out; everything else in each summary
(every metric of every model, the steps, the regime) is compared exactly. Not run: the
CIFAR-100 recipes (torchvision), ``llm_served_teacher`` (an inference server) and
``fashion_mnist_search`` (a search, not a run: ``tests/test_search.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from distill.cli.shared import quiet_libraries  # noqa: E402
from distill.recipes import load_recipe  # noqa: E402
from distill.runs import run_recipe  # noqa: E402

VOLATILE = ("seconds", "latency", "train_seconds", "samples_per_s")
TINY_LLAMA = (
    "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
    "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}"
)


def stand_ins(folder: Path) -> dict[str, Path]:
    """The small real data the recipes read here: digits images as Fashion-MNIST files,
    a text file and a WordPiece tokenizer, a tiny chat tokenizer and teacher, prompts."""
    import numpy as np
    from sklearn.datasets import load_digits

    from distill.data.text import pydoc_records
    from distill.training.checkpoint import save_weights
    from tests.conftest import write_idx
    from tests.test_generate import PROMPTS
    from tests.text_models import chat_tokenizer, tiny_llama, wordpiece

    digits = folder / "digits"
    digits.mkdir()
    data = load_digits()
    images = (data.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.pad(images.repeat(3, axis=1).repeat(3, axis=2), ((0, 0), (2, 2), (2, 2)))
    labels = data.target.astype(np.uint8)
    write_idx(digits / "train-images-idx3-ubyte.gz", images[:1500])
    write_idx(digits / "train-labels-idx1-ubyte.gz", labels[:1500])
    write_idx(digits / "t10k-images-idx3-ubyte.gz", images[1500:])
    write_idx(digits / "t10k-labels-idx1-ubyte.gz", labels[1500:])
    text = folder / "topics.txt"
    records = pydoc_records()[:40]
    text.write_text("\n\n".join(r["text"].replace("\n\n", "\n") for r in records))
    tokenizer = wordpiece(text, folder / "tokenizer")
    chat = folder / "chat-tokenizer"
    chat_tokenizer().save_pretrained(chat)
    torch.manual_seed(0)
    save_weights(tiny_llama(seed=5), folder / "chat-teacher.safetensors")
    prompts = folder / "prompts.jsonl"
    rows = [{"id": i, "messages": p["messages"]} for i, p in enumerate(PROMPTS * 6)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"digits": digits, "text": text, "tokenizer": tokenizer, "chat": chat,
            "prompts": prompts, "folder": folder}  # fmt: skip


def overrides(name: str, at: dict[str, Path]) -> list[str] | None:
    """The tiny budget of recipe ``name`` (None: not run here)."""
    from tests.test_language_recipes import tiny_overrides

    digits = [f"data.path={at['digits']}", "teacher.train.max_steps=10", "train.epochs=null",
              "train.max_steps=4", "output.latency_repeats=1", "data.labeled=300"]  # fmt: skip
    mnist1d = ["teacher.train.epochs=1", "teacher.train.max_steps=6", "train.epochs=1",
               "train.max_steps=6", "output.latency_repeats=1"]  # fmt: skip
    lm = [
        *tiny_overrides("llama", at["text"], at["tokenizer"], at["folder"]),
        "student.args.keep=2",
    ]
    chat = [
        "teacher.model=hf-config:llama", f"teacher.args={TINY_LLAMA}",
        f"teacher.checkpoint={at['folder'] / 'chat-teacher.safetensors'}",
        f"data.tokenizer=hf:{at['chat']}", "data.seq_len=24", "data.batch_size=4",
        "data.val_blocks=4", "data.test_blocks=4", f"generate.prompts={at['prompts']}",
        f"generate.out={at['folder'] / 'generated.jsonl'}", "generate.max_new_tokens=6",
        "train.max_steps=4", "train.eval_every=2", "output.latency_repeats=1",
        "student.model=hf-config:llama", f"student.args={TINY_LLAMA}",
    ]  # fmt: skip
    table = {
        "fashion_mnist_kd": digits,
        "fashion_mnist_all_labels": [*digits, "data.labeled=null"],
        "fashion_mnist_function_matching": digits,
        "fashion_mnist_compress": [*digits, "compress=[{kind: channels, ratio: 0.5, "
                                   "max_steps: 3}, {kind: quantize, scheme: int8, max_steps: 3}]"],
        "fashion_mnist_data_free": [*digits, "data.labeled=300", "data.batch_size=32",
                                    "data.synthetic.examples=64", "data.synthetic.batch_size=32",
                                    "data.synthetic.steps=5", "teacher.args.channels=[8,16]"],
        "fashion_mnist_pate": [*digits[:-1], "data.batch_size=32", "pate.teachers=10",
                               "pate.public=300", "pate.queries=120", "pate.sigma=2",
                               "pate.threshold=5", "pate.sigma_threshold=2",
                               "teacher.args.hidden=16", "teacher.train.epochs=2"],
        "fashion_mnist_clip_kd": [*digits, "data.labeled=300", "teacher.train.max_steps=30",
                                  "data.captions.probe_examples=500"],
        "fashion_mnist_progressive": [
            f"data.path={at['digits']}", "teacher.train.max_steps=6", "diffusion.steps=4",
            "diffusion.samples=20", "diffusion.classifier_epochs=1", "train.max_steps=2",
            "output.latency_repeats=1",
            "teacher.args={block_out_channels: [16, 32], down_block_types: [DownBlock2D, "
            "DownBlock2D], up_block_types: [UpBlock2D, UpBlock2D], layers_per_block: 1, "
            "norm_num_groups: 8}",
        ],
        "doctor_broken": [f"data.path={at['digits']}", "teacher.train.max_steps=10",
                          "train.epochs=null", "train.max_steps=4", "output.latency_repeats=1"],
        "fashion_mnist_dino": [f"data.path={at['digits']}", "train.epochs=null",
                               "train.max_steps=4", "output.latency_repeats=1",
                               "data.probe={labels: [200, 0], steps: 20}"],
        "fashion_mnist_byol": [f"data.path={at['digits']}", "train.epochs=null",
                               "train.max_steps=4", "output.latency_repeats=1",
                               "data.probe={labels: [200, 0], steps: 20}"],
        "distilbert": tiny_overrides("bert", at["text"], at["tokenizer"], at["folder"]),
        "llm_token_kd": lm,
        "llm_draft": lm,
        "llm_cached_kd": [*lm, "cache.shard_size=40"],
        "llm_seqkd": chat,
        "llm_on_policy": chat,
    }  # fmt: skip
    if name in ("mnist1d_mean_teacher", "mnist1d_mutual"):  # no teacher to train
        return mnist1d[2:]
    if name.startswith("mnist1d"):
        return mnist1d
    return table.get(name)


def steady(value, tmp: str):
    """``value`` without the entries that measure time, with this run's temporary folder
    written as ``<tmp>`` (paths to the stand-in data and the outputs differ per run)."""
    if isinstance(value, dict):
        return {k: steady(v, tmp) for k, v in value.items() if not any(t in k for t in VOLATILE)}
    if isinstance(value, list):
        return [steady(v, tmp) for v in value]
    if isinstance(value, str):
        return value.replace(tmp, "<tmp>")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="a file an earlier run wrote")
    parser.add_argument("--only", nargs="*", help="recipe names (default: every one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_libraries()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DISTILL_CACHE"] = str(Path(tmp) / "cache")
        os.environ["DISTILL_PLOTS"] = "0"
        at = stand_ins(Path(tmp))
        for path in sorted((ROOT / "recipes").glob("*.yaml")):
            name = path.stem
            tiny = overrides(name, at)
            if tiny is None or (args.only and name not in args.only):
                continue
            recipe = load_recipe(path, [*tiny, f"output.dir={Path(tmp) / 'runs'}"])
            summary = run_recipe(recipe, progress=False, log=lambda line: None)
            results[name] = steady(summary, tmp)
            print(f"{name}: {len(summary['models'])} models", flush=True)
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True, default=str))
    if args.compare is None:
        return
    before = json.loads(args.compare.read_text())
    after = json.loads(args.out.read_text())
    differ = [n for n in sorted({*before, *after}) if before.get(n) != after.get(n)]
    for name in differ:
        print(f"DIFFERS: {name}")
    print(f"{len(after) - len(differ)} of {len(after)} recipes give the same summary")
    raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
