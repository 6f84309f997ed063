"""The client's half of split fine-tuning: trainable adapters on its own layers, the loss, the chain rule.

    trainer = ClientTrainer(ClientModel.load(model_dir, split=4), AdapterConfig(lora_rank=8))
    batch = make_batch(load_examples()[:1], tokenizer)  # client_sdk.dataset
    out = trainer.head_forward(batch.input_ids, privatizer)  # Z' (graph kept) + position ids to send
    # Z' -> node 1 -> ... -> node m (each keeps its step's input)
    loss, grad = trainer.loss_from_hidden(hidden_last, batch.labels)
    # grad -> node m backward -> ... -> node 1 backward -> d(loss)/dZ'
    trainer.backward_head(out, grad_z); optimizer.step()

Only the client holds trainable parameters (LoRA on the layers [0, split) it runs, a soft prompt), the
labels and the loss; nodes keep their weights frozen and turn d(loss)/d(output) into d(loss)/d(input).

Differential privacy: the privatizer's clip + Gaussian noise is applied with autograd on, so the gradient
reaching the head is d(clip(Z))/dZ times the gradient the nodes returned (the noise is an additive
constant). That is the exact gradient of the loss the client measured on the noised forward pass; a
vector below the clip norm passes its gradient unchanged, one above it loses the radial component.

With a soft prompt the virtual tokens take positions 0..n-1 and a public BOS moves to position n, so a
Privatizer's `public_prefix` (counted from position 0) should stay 0: the virtual tokens' hidden states
are derived from a prompt learned on private data and are noised like the rest.

`split_train_step` runs a whole step in this process: the reference the networked pipeline must match.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from client_sdk.dataset import IGNORE_INDEX, TrainingBatch
from client_sdk.errors import TrainingError
from client_sdk.privacy import Privatizer
from splitmesh.model.client import ClientModel
from splitmesh.model.device import to_device
from splitmesh.model.families import FAMILIES
from splitmesh.model.training import ShardTrainer

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
_ADAPTER_FORMAT = "splitmesh-adapter"
_ADAPTER_VERSION = 1
SOFT_PROMPT_KEY = "prompt_embeddings"  # PEFT's name for prompt-tuning vectors
# The linear modules of a decoder layer that LoRA adapts by default, per layout.
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    kind: FAMILIES[kind].lora_targets for kind in ("llama", "gpt2")
}  # each model type's own list: splitmesh.model.families


@dataclass(frozen=True)
class AdapterConfig:
    """What the client trains. At least one of LoRA (lora_rank > 0) and a soft prompt must be on."""

    lora_rank: int = 8  # LoRA rank r; 0 = no LoRA
    lora_alpha: int = 16  # LoRA scaling is alpha / r
    lora_dropout: float = 0.0  # dropout on the LoRA branch input, active only in training forwards
    lora_targets: tuple[str, ...] = ()  # module names inside each head layer; () = the family's default
    soft_prompt_tokens: int = 0  # trainable virtual tokens prepended to every sequence; 0 = none

    def validate(self) -> AdapterConfig:
        if self.lora_rank < 0 or self.soft_prompt_tokens < 0:
            raise TrainingError("lora_rank and soft_prompt_tokens must be >= 0")
        if self.lora_rank == 0 and self.soft_prompt_tokens == 0:
            raise TrainingError("nothing to train: set lora_rank > 0 and/or soft_prompt_tokens > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TrainingError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha <= 0:
            raise TrainingError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        return self

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AdapterConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise TrainingError(f"unknown adapter settings {sorted(unknown)}")
        values = dict(data)
        values["lora_targets"] = tuple(values.get("lora_targets", ()))
        return cls(**values).validate()


@dataclass(frozen=True)
class HeadOutput:
    """What the client releases for one training step, with the graph back to its parameters."""

    z: torch.Tensor  # [batch, virtual + seq, hidden] after layers [0, split) (and the privatizer)
    position_ids: torch.Tensor  # [batch, virtual + seq] to send with z


class ClientTrainer:
    """Trainable adapters on a ClientModel. LoRA is injected into the model's own head layers (in place),
    so a ClientModel trained here generates with its adapter afterwards; dropout runs only inside
    `head_forward`. The soft prompt is this object's parameter and is not seen by `ClientModel.head`.
    """

    def __init__(self, model: ClientModel, config: AdapterConfig, *, seed: int | None = None):
        if seed is None:  # fresh initial values: an adapter's start is nobody else's business
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        self.model = model
        self.config = config.validate()
        self.family = model.spec.arch.family
        self._lora_dropouts: list[nn.Module] = []
        if config.lora_rank:
            self._inject_lora(seed)
        self.soft_prompt: nn.Parameter | None = None
        if config.soft_prompt_tokens:
            # Real token embeddings as a start: the right scale for the layers, unlike N(0, 1).
            generator = torch.Generator().manual_seed(seed)
            table = self._token_embedding().weight
            ids = torch.randint(0, table.shape[0], (config.soft_prompt_tokens,), generator=generator)
            self.soft_prompt = nn.Parameter(table[ids].detach().clone())  # [virtual, hidden]

    def _token_embedding(self) -> nn.Embedding:
        module = self.model.embeddings[self.model.spec.arch.embed[0]]
        assert isinstance(module, nn.Embedding)
        return module

    def _inject_lora(self, seed: int) -> None:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        if self.model.split == 0:
            raise TrainingError(
                "the client runs no decoder layer (split 0): use a soft prompt instead of LoRA"
            )
        if any(isinstance(m, LoraLayer) for m in self.model.stack.modules()):
            raise TrainingError("this ClientModel already carries a LoRA adapter; load a fresh ClientModel")
        targets = self.config.lora_targets or self.model.spec.arch.traits.lora_targets
        lora = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(targets),
            bias="none",
            fan_in_fan_out=self.family == "gpt2",  # GPT-2's Conv1D stores weights transposed
        )
        # peft draws LoRA A from the global RNG: fork it so the seed decides and callers are not disturbed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                inject_adapter_in_model(lora, self.model.stack)
            except ValueError as exc:
                raise TrainingError(
                    f"LoRA targets {list(targets)} not found in the head layers: {exc}"
                ) from exc
        for module in self.model.stack.modules():
            if isinstance(module, LoraLayer):
                self._lora_dropouts.extend(module.lora_dropout.values())
        self._set_dropout(False)

    def _set_dropout(self, active: bool) -> None:
        for module in self._lora_dropouts:
            module.train(active)

    # ------------------------------------------------------------------ parameters

    @property
    def virtual_tokens(self) -> int:
        return self.config.soft_prompt_tokens

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter of everything this client trains (LoRA of the head layers, soft prompt)."""
        params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if self.soft_prompt is not None:
            params[SOFT_PROMPT_KEY] = self.soft_prompt
        return params

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    def optimizer(self, lr: float = 1e-3, weight_decay: float = 0.0, **kwargs: Any) -> torch.optim.AdamW:
        """AdamW over the trainable parameters only (the base weights stay frozen)."""
        return torch.optim.AdamW(
            list(self.trainable_parameters().values()), lr=lr, weight_decay=weight_decay, **kwargs
        )

    # ------------------------------------------------------------------ compute

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq] token ids -> [batch, virtual + seq] positions: soft prompt first, tokens after."""
        batch, seq = input_ids.shape
        return torch.arange(self.virtual_tokens + seq).repeat(batch, 1)  # contiguous: ready for the wire

    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [batch, seq] -> (inputs of layer 0 [batch, virtual + seq, hidden], position ids)."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
            raise TrainingError(f"input_ids must be integer [batch, seq], got {list(input_ids.shape)}")
        position_ids = self.position_ids(input_ids)
        hidden = self.model.token_embeddings(input_ids)  # [batch, seq, hidden]; Gemma scales here
        if self.soft_prompt is not None:
            prompt = self.soft_prompt.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([prompt, hidden], dim=1)  # [batch, virtual + seq, hidden]
        # As the unsplit model treats inputs_embeds: a family's multiplier, GPT-2's absolute positions
        # (the virtual tokens take the first ones).
        return self.model.layer_input(hidden, position_ids), position_ids

    def head_forward(self, input_ids: torch.Tensor, privatizer: Privatizer | None = None) -> HeadOutput:
        """Embeddings (+ soft prompt) and layers [0, split), then the privatizer if any.

        Send `z` and `position_ids` to the first node; keep the returned object for `backward_head`. Under
        torch.no_grad() it evaluates (no graph, no dropout).
        """
        self._set_dropout(torch.is_grad_enabled())  # under no_grad (evaluation) dropout stays off
        try:
            hidden, position_ids = self.embed(input_ids)
            z = self.model.stack(hidden, position_ids, None)  # [batch, virtual + seq, hidden]
            if privatizer is not None:
                z = privatizer(z, 0)  # differentiable: gradient = d(clip(Z))/dZ
        finally:
            self._set_dropout(False)
        return HeadOutput(z, position_ids)

    def full_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels [batch, seq] -> [batch, virtual + seq]: the soft prompt positions carry no label."""
        if not self.virtual_tokens:
            return labels
        pad = torch.full((labels.shape[0], self.virtual_tokens), IGNORE_INDEX, dtype=labels.dtype)
        return torch.cat([pad, labels], dim=1)

    def logits_and_targets(
        self, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tail on the labelled positions only: logits [n, vocab] and the next tokens [n] they predict."""
        targets = self.full_labels(labels)[:, 1:]  # [batch, virtual + seq - 1]: position t predicts t + 1
        if hidden.dim() != 3 or hidden.shape[:2] != (targets.shape[0], targets.shape[1] + 1):
            raise TrainingError(
                f"hidden states {list(hidden.shape)} do not fit labels {list(labels.shape)} "
                f"with {self.virtual_tokens} virtual tokens"
            )
        keep = targets != IGNORE_INDEX
        if not bool(keep.any()):
            raise TrainingError("the batch has no labelled token: every completion was cut or empty")
        return self.model.tail(hidden[:, :-1][keep]), targets[keep]  # LM head only where the loss needs it

    def loss_from_hidden(
        self, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last layer's output [batch, virtual + seq, hidden] and labels [batch, seq] ->
        (mean cross-entropy over labelled tokens, d(loss)/d(hidden) to send back through the nodes)."""
        leaf = hidden.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, targets = self.logits_and_targets(leaf, labels)
            loss = nn.functional.cross_entropy(logits.float(), targets)
            (grad,) = torch.autograd.grad(loss, leaf)
        return loss.detach(), grad

    def backward_head(self, head: HeadOutput | torch.Tensor, grad_z: torch.Tensor) -> None:
        """Accumulate d(loss)/d(parameters) into .grad from d(loss)/dZ' that the first node returned."""
        z = head.z if isinstance(head, HeadOutput) else head
        if not z.requires_grad:
            raise TrainingError("Z has no autograd graph: run head_forward outside torch.no_grad()")
        if grad_z.shape != z.shape:
            raise TrainingError(f"gradient {list(grad_z.shape)} does not match Z {list(z.shape)}")
        if not bool(torch.isfinite(grad_z).all()):
            raise TrainingError("the gradient from the first node holds NaN or inf; skip this step")
        z.backward(to_device(grad_z, z.device, z.dtype))  # the gradient arrives as a CPU frame

    # ------------------------------------------------------------------ adapter files

    def adapter_key(self, name: str) -> str:
        """Parameter name -> PEFT's key for the same tensor in the unsplit Hugging Face model."""
        if name == SOFT_PROMPT_KEY:
            return name
        # stack.layers.<i>.<p>.lora_A.default.weight -> base_model.model.model.layers.<i>.<p>.lora_A.weight
        _, _, index, rest = name.split(".", 3)
        return (
            "base_model.model."
            + self.model.spec.arch.layer_prefix(int(index))
            + rest.replace(".default.", ".")
        )

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors under PEFT's key names (`set_peft_model_state_dict` loads the LoRA part)."""
        return {self.adapter_key(n): p.detach().clone() for n, p in self.trainable_parameters().items()}

    def _metadata(self) -> dict[str, Any]:
        spec = self.model.spec
        return {
            "format": _ADAPTER_FORMAT,
            "version": _ADAPTER_VERSION,
            "adapter": {**asdict(self.config), "lora_targets": list(self.config.lora_targets)},
            "split": self.model.split,
            "model": {"name": spec.source.name, "family": self.family, "hidden_size": spec.hidden_size},
            "dtype": str(spec.dtype).removeprefix("torch."),
        }

    def save_adapter(self, directory: str | Path) -> Path:
        """Write adapter.safetensors and adapter.json into `directory` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.adapter_state_dict().items()}
        save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (path / ADAPTER_CONFIG).write_text(json.dumps(self._metadata(), indent=2) + "\n")
        return path

    @staticmethod
    def read_metadata(directory: str | Path) -> dict[str, Any]:
        path = Path(directory) / ADAPTER_CONFIG
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"cannot read {path}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != _ADAPTER_FORMAT:
            raise TrainingError(f"{path} is not a splitmesh adapter")
        if meta.get("version") != _ADAPTER_VERSION:
            raise TrainingError(
                f"{path} has adapter version {meta.get('version')}; this SDK reads {_ADAPTER_VERSION}"
            )
        return meta

    @classmethod
    def from_adapter(cls, model: ClientModel, directory: str | Path) -> ClientTrainer:
        """A trainer configured as the saved adapter, with its weights loaded."""
        config = AdapterConfig.from_json(cls.read_metadata(directory)["adapter"])
        trainer = cls(model, config)
        trainer.load_adapter(directory)
        return trainer

    def load_adapter(self, directory: str | Path) -> None:
        """Load a saved adapter into this trainer; its config, split and model shape must match exactly."""
        meta = self.read_metadata(directory)
        mine = self._metadata()
        model = {k: v for k, v in mine["model"].items() if k != "name"}  # a copied model dir is fine
        theirs = meta.get("model", {})
        if not isinstance(theirs, dict) or any(theirs.get(k) != v for k, v in model.items()):
            raise TrainingError(f"adapter model {theirs} does not match this trainer's {mine['model']}")
        if theirs.get("name") != mine["model"]["name"]:
            logger.warning(
                "adapter trained on model %r is loaded into %r", theirs.get("name"), mine["model"]["name"]
            )
        for key in ("adapter", "split", "dtype"):
            if meta.get(key) != mine[key]:
                raise TrainingError(
                    f"adapter {key} {meta.get(key)} does not match this trainer's {mine[key]}"
                )
        loaded = load_file(str(Path(directory) / ADAPTER_WEIGHTS))
        params = {self.adapter_key(n): p for n, p in self.trainable_parameters().items()}
        if loaded.keys() != params.keys():
            missing, extra = sorted(params.keys() - loaded.keys()), sorted(loaded.keys() - params.keys())
            raise TrainingError(f"adapter tensors differ: missing {missing[:3]}, unexpected {extra[:3]}")
        for key, param in params.items():
            if loaded[key].shape != param.shape or loaded[key].dtype != param.dtype:
                raise TrainingError(f"adapter tensor {key} is {list(loaded[key].shape)} {loaded[key].dtype}")
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(loaded[key])


# ---------------------------------------------------------------------- in-process pipeline


@dataclass
class LocalTrainStep:
    loss: float
    label_tokens: int
    grad_norm: float | None = None  # of the trainable parameters before the optimizer step


def split_train_step(
    trainer: ClientTrainer,
    shards: Sequence[ShardTrainer],
    batch: TrainingBatch,
    *,
    job_key: str,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    privatizer: Privatizer | None = None,
    max_grad_norm: float | None = None,
) -> LocalTrainStep:
    """One training step through head -> shards -> tail -> shards reversed -> head, all in this process:
    the reference the networked pipeline must match. Steps the optimizer when one is given."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    head = trainer.head_forward(batch.input_ids, privatizer)
    hidden = head.z.detach()
    for shard in shards:
        hidden = shard.forward(job_key, step, hidden, head.position_ids)
    loss, grad = trainer.loss_from_hidden(hidden, batch.labels)
    for shard in reversed(shards):
        grad = shard.backward(job_key, step, grad)
    trainer.backward_head(head, grad)
    result = LocalTrainStep(float(loss), batch.label_tokens)
    params = list(trainer.trainable_parameters().values())
    if max_grad_norm is not None:
        result.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if optimizer is not None:
        optimizer.step()
    return result
