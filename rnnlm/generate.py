"""Text generation: greedy decoding and sampling with temperature, top-k and top-p.

The prompt is run through the model once; after that each step feeds only the newest
token and carries the recurrent state, so a step costs the same however long the text.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from rnnlm.config import SamplingConfig
from rnnlm.model import RNNLanguageModel, State, select_state
from rnnlm.tokenizers import Tokenizer


def next_token_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                            top_p: float = 1.0) -> torch.Tensor:
    """Probabilities after temperature, then top-k, then top-p (nucleus), renormalised.

    Rows of `logits` are independent. Temperature must be positive here (0 is greedy).
    """
    scaled = logits.float() / temperature
    if top_k and top_k < scaled.shape[-1]:
        kth_largest = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth_largest, -torch.inf)
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # keeps the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def prime(model: RNNLanguageModel, tokenizer: Tokenizer, seed_text: str) -> tuple[torch.Tensor, State]:
    """Run the end-of-line context and the seed through the model: last logits and state."""
    ids = np.concatenate([[tokenizer.eol_id], tokenizer.encode(seed_text)]).astype(np.int64)
    device = model.embedding.weight.device
    logits, state = model(torch.from_numpy(ids)[None].to(device))
    return logits[:, -1], state


def unseen_characters(tokenizer: Tokenizer, text: str) -> list[str]:
    """Characters of `text` that the tokenizer maps to the unknown token, each once."""
    seen: dict[str, None] = {}
    for char in text:
        if char != "\n" and tokenizer.encode(char)[0] == tokenizer.unk_id:
            seen[char] = None
    return list(seen)


@torch.inference_mode()
def generate(model: RNNLanguageModel, tokenizer: Tokenizer, seed_text: str,
             config: SamplingConfig) -> Iterator[torch.Tensor]:
    """Yield, per step, the next token id of each of the `num_samples` parallel samples."""
    config.validate()
    model.eval()
    generator = torch.Generator(device=model.embedding.weight.device)
    generator.manual_seed(config.random_seed if config.random_seed is not None else torch.seed())
    logits, state = prime(model, tokenizer, seed_text)
    rows = torch.zeros(config.num_samples, dtype=torch.long, device=logits.device)
    logits, state = logits.index_select(0, rows), select_state(state, rows)
    greedy = config.strategy == "greedy" or config.temperature == 0
    for _ in range(config.length):
        if greedy:
            tokens = logits.argmax(dim=-1)
        else:
            probs = next_token_distribution(logits, config.temperature, config.top_k, config.top_p)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        yield tokens
        step_logits, state = model(tokens[:, None], state)
        logits = step_logits[:, -1]
