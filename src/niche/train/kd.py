"""Knowledge distillation inside the training loop: the student's loss mixes cross-entropy with a divergence from
a teacher's next-token distributions on the supervised positions (forward KL, or GKD's generalised
Jensen-Shannon), softened by a temperature and optionally restricted to the teacher's top-k tokens. The flow that
builds students and teachers is `niche.distill`."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from niche.data.template import IGNORE_INDEX
from niche.errors import ConfigError
from niche.train.engine import SupervisedOnlyTrainer
from niche.train.loss import causal_lm_of, supports_supervised_only_logits

Divergence = Literal["forward_kl", "jsd"]


def kd_loss_sum(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: Divergence = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """Summed divergence between teacher and student next-token distributions, one row per position."""
    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature
    if top_k is not None and top_k < teacher.shape[-1]:
        teacher, indices = teacher.topk(top_k, dim=-1)
        student = student.gather(-1, indices)
    log_student = F.log_softmax(student, dim=-1)
    log_teacher = F.log_softmax(teacher, dim=-1)
    if kind == "forward_kl":
        divergence = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    elif kind == "jsd":
        if not 0 < beta < 1:
            raise ConfigError(f"distill.beta: the JSD mixes the two distributions, so 0 < beta < 1 (got {beta})")
        mixture = torch.logsumexp(
            torch.stack([log_teacher + torch.log(torch.tensor(beta)), log_student + torch.log(torch.tensor(1 - beta))]),
            dim=0,
        )
        divergence = beta * (log_teacher.exp() * (log_teacher - mixture)).sum(-1) + (1 - beta) * (
            log_student.exp() * (log_student - mixture)
        ).sum(-1)
    else:
        raise ConfigError(f"distill.kind: expected forward_kl or jsd, got {kind!r}")
    return divergence.sum() * temperature**2


def supervised_positions_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Logits at the positions whose next token is supervised (prompt and padding never reach the vocabulary)."""
    supervised = labels[:, 1:] != IGNORE_INDEX
    if supports_supervised_only_logits(model):
        causal_lm = causal_lm_of(model)
        hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return causal_lm.get_output_embeddings()(hidden[:, :-1][supervised])
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][supervised]


class DistillTrainer(SupervisedOnlyTrainer):
    """The SFT trainer with a teacher: alpha * cross-entropy + (1 - alpha) * KD on supervised positions."""

    def __init__(self, *args: Any, teacher: Any, settings: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()
        self.settings = settings

    def compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        settings = self.settings
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        student_logits = supervised_positions_logits(
            self.accelerator.unwrap_model(model), input_ids, attention_mask, labels
        )
        with torch.no_grad():
            teacher_logits = supervised_positions_logits(self.teacher, input_ids, attention_mask, labels)
        targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]
        cross_entropy = F.cross_entropy(student_logits.float(), targets, reduction="sum")
        kd = kd_loss_sum(
            student_logits, teacher_logits, settings.kind, settings.beta, settings.temperature, settings.top_k
        )
        count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
        loss = (settings.alpha * cross_entropy + (1 - settings.alpha) * kd) / count
        return (loss, {}) if return_outputs else loss
