"""A tiny distillation run for the multi-process tests (launched by tests/test_distributed.py
with torchrun or accelerate launch, or run alone as the single-process reference).

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_train.py OUT --batch 8
    python tests/distributed_train.py OUT --batch 16          # the same global batch, 1 process

``--task classifier``: an MLP teacher and student on scikit-learn's digits, KD + CE.
``--task lm``: tiny Llama teacher and student, token-level KD and CE on rows whose loss
masks have different lengths, so ranks hold different token counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill import Distiller, Objective, Term, losses, teachers
from distill.training.distributed import process_group_ended


def classifier_setup():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    torch.manual_seed(2)
    student = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    objective = Objective(
        kd=Term(losses.kl, weight=0.9, temperature=2.0), ce=Term(losses.cross_entropy, weight=0.1)
    )
    return TensorDataset(x, y), teacher, student, objective


def lm_setup():
    import transformers

    from distill.methods.token_kd import token_kd_term

    def llama(seed):
        torch.manual_seed(seed)
        config = transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
        return transformers.LlamaForCausalLM(config)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(64, (96, 17), generator=g)
    lengths = torch.randint(1, 17, (96,), generator=g)  # tokens that count, per row
    mask = torch.arange(16)[None, :] < lengths[:, None]
    rows = [
        {"input_ids": ids[i, :-1], "labels": ids[i, 1:], "loss_mask": mask[i]} for i in range(96)
    ]
    teacher, student = llama(1), llama(2)
    objective = Objective(
        kd=token_kd_term(student, teacher, weight=0.7), ce=Term(losses.cross_entropy, weight=0.3)
    )
    return rows, teacher, student, objective


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", choices=["classifier", "lm"], default="classifier")
    parser.add_argument("--batch", type=int, default=8, help="per process")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    data, teacher, student, objective = (lm_setup if args.task == "lm" else classifier_setup)()
    run = Distiller(
        student,
        teachers.Module(teacher),
        objective,
        lr=1e-2,
        lr_schedule="constant",
        seed=0,
        progress=False,
        cpu=True,
        run_dir=args.out,
        log_every=1,
        select_metric=None,
    )
    with process_group_ended():  # a clean exit: gloo's threads stop first
        run.fit(
            DataLoader(data, batch_size=args.batch, shuffle=True),
            max_steps=args.steps,
            resume=args.resume,
        )


if __name__ == "__main__":
    main()
