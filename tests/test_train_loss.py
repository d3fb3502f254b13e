"""The fast path (output projection on supervised positions only) computes the plain path's loss and gradients."""

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from niche.data.template import IGNORE_INDEX
from niche.train.loss import supervised_loss_sum


def batch(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = input_ids.clone()
    labels[:, :7] = IGNORE_INDEX  # prompt
    labels[attention_mask == 0] = IGNORE_INDEX  # padding
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_supervised_only_loss_and_gradients_match_the_plain_causal_lm_loss(tiny_base) -> None:
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    inputs = batch(model.config.vocab_size)

    plain = model(**inputs).loss
    plain.backward()
    plain_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    loss_sum, count = supervised_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
    fast = loss_sum / count
    fast.backward()

    assert count == (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_full_logits_fallback_computes_the_same_loss(tiny_base) -> None:
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    inputs = batch(model.config.vocab_size)
    fast_sum, fast_count = supervised_loss_sum(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
    full_sum, full_count = supervised_loss_sum(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], supervised_only_logits=False
    )
    assert fast_count == full_count
    torch.testing.assert_close(fast_sum, full_sum, rtol=1e-5, atol=1e-5)
