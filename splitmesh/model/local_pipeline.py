"""Split generation with every piece in this process: the reference the networked pipeline must match,
and what the tests and benchmarks compare against `model.generate`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitmesh.model.client import ClientModel
from splitmesh.model.runner import ShardRunner


@dataclass
class SplitGeneration:
    tokens: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # [vocab] per generated token


def greedy_generate_split(
    client: ClientModel,
    runners: list[ShardRunner],
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    prefill_chunk: int | None = None,
    session_id: str = "local",
) -> SplitGeneration:
    """Greedy decoding through client head -> runners -> client tail, each piece with its own cache.

    input_ids [1, prompt]; a prefill_chunk sends the prompt in pieces of that many tokens.
    """
    cache = client.new_cache()
    out = SplitGeneration()
    prompt = input_ids.shape[1]
    chunk = prefill_chunk or prompt
    pending = [input_ids[:, i : i + chunk] for i in range(0, prompt, chunk)]
    position = 0
    with torch.inference_mode():
        while True:
            for piece in pending:
                q = piece.shape[1]
                positions = torch.arange(position, position + q)
                hidden = client.head(piece, positions.unsqueeze(0), cache)
                for runner in runners:
                    hidden = runner.forward(session_id, hidden, positions)
                logits = client.tail(hidden[:, -1:])[0, -1]
                position += q
            token = int(torch.argmax(logits))
            out.tokens.append(token)
            out.logits.append(logits)
            if len(out.tokens) >= max_new_tokens or token == eos_token_id:
                break
            pending = [torch.tensor([[token]])]
    for runner in runners:
        runner.close(session_id)
    return out
