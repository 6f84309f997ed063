"""Split fine-tuning: gradients through head -> nodes -> tail -> nodes -> head equal plain autograd through
the unsplit model, nodes refuse what they cannot answer, and training on the shipped data teaches it."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from client_sdk.adapters import (
    DEFAULT_LORA_TARGETS,
    SOFT_PROMPT_KEY,
    AdapterConfig,
    ClientTrainer,
    split_train_step,
)
from client_sdk.dataset import (
    IGNORE_INDEX,
    SHIPPED_HELDOUT,
    TrainingBatch,
    encode_example,
    load_examples,
    make_batch,
    shipped_dataset,
)
from client_sdk.errors import TrainingError
from client_sdk.privacy import Privatizer, seeded_normal
from splitmesh.model.client import ClientModel
from splitmesh.model.errors import BadHiddenStates, BadPositions, ModelError
from splitmesh.model.runner import ShardRunner
from splitmesh.model.source import ModelSource
from splitmesh.model.training import (
    BadGradient,
    DuplicateStep,
    ShardTrainer,
    StepConsumed,
    TrainerLimits,
    TrainingStoreFull,
    UnknownStep,
)
from tests.model_fixtures import save_random_model, tiny_gpt2_config, tiny_llama_config

SPLIT = 2  # the client runs layers [0, 2) of the 6-layer tiny model
SHARDS = [(2, 4), (4, 6)]
GRAD_TOLERANCE = 1e-5  # fp32, absolute
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '</s>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained on the shipped data, with a chat template (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [e["prompt"] + " " + e["completion"] for e in load_examples()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=384,
            special_tokens=["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast) -> Path:
    config = tiny_llama_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return save_random_model(config, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast) -> Path:
    return save_random_model(tiny_gpt2_config(vocab_size=len(tokenizer)), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def shards(llama_dir: Path) -> list[ShardTrainer]:
    return [ShardTrainer.load(str(llama_dir), a, b) for a, b in SHARDS]


@pytest.fixture(scope="module")
def batch(tokenizer: PreTrainedTokenizerFast) -> TrainingBatch:
    return make_batch(load_examples()[:3], tokenizer)  # three rows of different lengths: right padding


def wire(tensor: torch.Tensor) -> torch.Tensor:
    """What crosses the network: raw little-endian bytes, rebuilt with the sender's dtype and shape."""
    array = tensor.detach().numpy()
    data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return torch.from_numpy(np.frombuffer(bytearray(data), dtype=array.dtype).reshape(array.shape))


def make_trainer(model_dir: Path, config: AdapterConfig, seed: int = 0) -> ClientTrainer:
    trainer = ClientTrainer(ClientModel.load(str(model_dir), SPLIT), config, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # LoRA B starts at zero, which would hide every gradient of A
        for name, param in trainer.trainable_parameters().items():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return trainer


def split_gradients(
    trainer: ClientTrainer,
    shards: list[ShardTrainer],
    batch: TrainingBatch,
    privatizer: Privatizer | None,
    step: int,
) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    """One step with every tensor crossing a 'wire'; returns the loss, dL/dZ' and the parameter grads."""
    head = trainer.head_forward(batch.input_ids, privatizer)
    hidden, positions = wire(head.z), wire(head.position_ids)
    for shard in shards:
        hidden = wire(shard.forward("job", step, hidden, positions))
    loss, grad = trainer.loss_from_hidden(hidden, batch.labels)
    for shard in reversed(shards):
        grad = wire(shard.backward("job", step, wire(grad)))
    trainer.backward_head(head, grad)
    params = trainer.trainable_parameters()
    grads = {trainer.adapter_key(n): p.grad for n, p in params.items() if p.grad is not None}
    assert len(grads) == len(params)
    return float(loss), grad, grads


def reference_gradients(
    model_dir: Path, trainer: ClientTrainer, batch: TrainingBatch, privatizer: Privatizer | None
) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    """Plain autograd through the unsplit Hugging Face model with the same adapter (PEFT for LoRA)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    model.requires_grad_(False)
    config = trainer.config
    if config.lora_rank:
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            target_modules=list(DEFAULT_LORA_TARGETS[trainer.family]),
            fan_in_fan_out=trainer.family == "gpt2",
            layers_to_transform=list(range(SPLIT)),
        )
        model = get_peft_model(model, lora)
        state = {k: v for k, v in trainer.adapter_state_dict().items() if k != SOFT_PROMPT_KEY}
        loaded = set_peft_model_state_dict(model, state)
        assert not loaded.unexpected_keys  # type: ignore[attr-defined]  # the file uses PEFT's key names
    base = model.get_base_model() if config.lora_rank else model
    captured: dict[str, torch.Tensor] = {}

    def release(module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        z = privatizer(output, 0) if privatizer is not None else output
        z.retain_grad()
        captured["z"] = z
        return z

    layers = base.model.layers if trainer.family == "llama" else base.transformer.h
    layers[SPLIT - 1].register_forward_hook(release)
    embeds = base.get_input_embeddings()(batch.input_ids)  # GPT-2 adds its position embeddings itself
    soft = None
    if trainer.soft_prompt is not None:
        soft = trainer.soft_prompt.detach().clone().requires_grad_(True)
        embeds = torch.cat([soft.expand(embeds.shape[0], -1, -1), embeds], dim=1)
    positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
    logits = model(inputs_embeds=embeds, position_ids=positions).logits
    targets = trainer.full_labels(batch.labels)[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    loss.backward()
    trained = {n.replace(".default.", "."): p for n, p in model.named_parameters() if p.requires_grad}
    if soft is not None:
        trained[SOFT_PROMPT_KEY] = soft
    grads = {name: p.grad for name, p in trained.items() if p.grad is not None}
    assert len(grads) == len(trained) and captured["z"].grad is not None
    return float(loss.detach()), captured["z"].grad, grads


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---- (a) the split computes the unsplit model's gradients


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # PEFT calling transformers
@pytest.mark.parametrize(
    ("family", "config", "noised"),
    [
        ("llama", AdapterConfig(lora_rank=4, lora_alpha=8), False),
        ("llama", AdapterConfig(lora_rank=0, soft_prompt_tokens=3), False),
        ("llama", AdapterConfig(lora_rank=4, lora_alpha=8, soft_prompt_tokens=3), False),
        ("llama", AdapterConfig(lora_rank=4, lora_alpha=8, soft_prompt_tokens=3), True),
        ("gpt2", AdapterConfig(lora_rank=4, lora_alpha=8, soft_prompt_tokens=3), True),
    ],
    ids=["lora", "soft-prompt", "both", "both-with-dp", "gpt2-both-with-dp"],
)
def test_split_gradients_equal_unsplit_autograd(
    request: pytest.FixtureRequest, batch: TrainingBatch, family: str, config: AdapterConfig, noised: bool
) -> None:
    model_dir: Path = request.getfixturevalue(f"{family}_dir")
    shards = [ShardTrainer.load(str(model_dir), a, b) for a, b in SHARDS]
    trainer = make_trainer(model_dir, config)

    def privatizer() -> Privatizer | None:
        if not noised:
            return None
        with torch.no_grad():  # clip at the median norm: some vectors are clipped, some pass unchanged
            z = trainer.head_forward(batch.input_ids).z
        clip = float(torch.linalg.vector_norm(z, dim=-1).median())
        return Privatizer(
            500.0, 1e-5, clip, public_prefix=1, noise_source=seeded_normal(7)
        )  # same noise in both runs

    loss, grad_z, grads = split_gradients(trainer, shards, batch, privatizer(), step=0)
    ref_loss, ref_grad_z, ref_grads = reference_gradients(model_dir, trainer, batch, privatizer())

    assert math.isclose(loss, ref_loss, rel_tol=1e-6)
    assert grad_z.shape == ref_grad_z.shape
    assert max_diff(grad_z, ref_grad_z) < GRAD_TOLERANCE
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():
        assert float(grad.abs().max()) > 0, key  # every parameter really gets a gradient
        assert max_diff(grad, ref_grads[key]) < GRAD_TOLERANCE, key
    assert all(not s.pending("job") for s in shards)  # each backward consumed its step


def test_right_padding_changes_no_real_token(
    llama_dir: Path, shards: list[ShardTrainer], tokenizer: PreTrainedTokenizerFast
) -> None:
    """Each row's loss and gradients are the same alone or padded in a batch (plain causal mask)."""
    examples = load_examples()[3:6]
    config = AdapterConfig(lora_rank=4, lora_alpha=8, soft_prompt_tokens=2)
    trainer = make_trainer(llama_dir, config)
    batch = make_batch(examples, tokenizer)
    assert (batch.attention_mask == 0).any()
    loss, _, grads = split_gradients(trainer, shards, batch, None, step=100)
    total_loss, total_grads = 0.0, {k: torch.zeros_like(v) for k, v in grads.items()}
    for i, example in enumerate(examples):
        for p in trainer.trainable_parameters().values():
            p.grad = None
        single = make_batch([example], tokenizer)
        row_loss, _, row_grads = split_gradients(trainer, shards, single, None, step=101 + i)
        weight = single.label_tokens / batch.label_tokens  # the batch loss is a mean over its label tokens
        total_loss += row_loss * weight
        for key, grad in row_grads.items():
            total_grads[key] += grad * weight
    assert math.isclose(loss, total_loss, rel_tol=1e-5)
    for key, grad in grads.items():
        assert max_diff(grad, total_grads[key]) < GRAD_TOLERANCE, key


def test_shard_trainer_matches_stateless_runner_backward(llama_dir: Path, shards: list[ShardTrainer]) -> None:
    runner = ShardRunner.load(str(llama_dir), *SHARDS[0])
    trainer = ShardTrainer.from_runner(runner)
    assert trainer.stack is runner.stack  # no second copy of the weights
    hidden, grad_out = torch.randn(1, 9, 64), torch.randn(1, 9, 64)
    positions = torch.arange(9)
    out = trainer.forward("j", 0, hidden, positions)
    assert torch.equal(out, shards[0].stack(hidden, positions[None], None))
    assert torch.equal(trainer.backward("j", 0, grad_out), runner.backward(hidden, positions, grad_out))


# ---- (b) what a node refuses


def make_shard(llama_dir: Path, **limits: float) -> ShardTrainer:
    return ShardTrainer.load(str(llama_dir), *SHARDS[0], limits=TrainerLimits(**limits))  # type: ignore[arg-type]


def test_bad_gradients_are_refused_and_keep_the_step(llama_dir: Path) -> None:
    shard = make_shard(llama_dir)
    hidden = torch.randn(2, 5, 64)
    shard.forward("j", 0, hidden, torch.arange(5))
    with pytest.raises(BadGradient, match="must match"):
        shard.backward("j", 0, torch.zeros(2, 4, 64))
    with pytest.raises(BadGradient, match="must match"):
        shard.backward("j", 0, torch.zeros(2, 5, 64, dtype=torch.float64))
    for bad in (math.nan, math.inf):
        grad = torch.zeros(2, 5, 64)
        grad[1, 2, 3] = bad
        with pytest.raises(BadGradient, match="NaN or inf"):
            shard.backward("j", 0, grad)
    assert shard.pending("j") == [0]  # a refused gradient does not consume the step
    assert shard.backward("j", 0, torch.ones(2, 5, 64)).shape == hidden.shape
    with pytest.raises(StepConsumed, match="already ran its backward"):
        shard.backward("j", 0, torch.ones(2, 5, 64))
    assert isinstance(StepConsumed("x"), UnknownStep) and isinstance(UnknownStep("x"), KeyError)
    assert shard.stored_bytes == 0


def test_unknown_and_duplicate_steps(llama_dir: Path) -> None:
    shard = make_shard(llama_dir)
    with pytest.raises(UnknownStep, match="no stored step 3 for job 'nobody'"):
        shard.backward("nobody", 3, torch.zeros(1, 2, 64))
    shard.forward("j", 1, torch.randn(1, 2, 64), torch.arange(2))
    with pytest.raises(UnknownStep, match="no stored step 2"):
        shard.backward("j", 2, torch.zeros(1, 2, 64))
    with pytest.raises(DuplicateStep):
        shard.forward("j", 1, torch.randn(1, 2, 64), torch.arange(2))
    shard.backward("j", 1, torch.zeros(1, 2, 64))
    with pytest.raises(DuplicateStep):  # a consumed step number is not reused either
        shard.forward("j", 1, torch.randn(1, 2, 64), torch.arange(2))


def test_bad_inputs_are_refused(llama_dir: Path) -> None:
    shard = make_shard(llama_dir, max_step_tokens=16)
    positions = torch.arange(4)
    with pytest.raises(BadHiddenStates, match="float64"):
        shard.forward("j", 0, torch.randn(1, 4, 64, dtype=torch.float64), positions)
    with pytest.raises(BadHiddenStates, match=r"\[batch, seq, 64\]"):
        shard.forward("j", 0, torch.randn(1, 4, 32), positions)
    with pytest.raises(BadHiddenStates, match="at most 16 tokens"):
        shard.forward("j", 0, torch.randn(5, 4, 64), positions)
    with pytest.raises(BadHiddenStates, match="NaN or inf"):
        shard.forward("j", 0, torch.full((1, 4, 64), math.nan), positions)
    with pytest.raises(BadPositions):
        shard.forward("j", 0, torch.randn(1, 4, 64), torch.arange(3))
    with pytest.raises(BadPositions):
        shard.forward("j", 0, torch.randn(1, 4, 64), torch.arange(4.0))
    assert shard.stored_bytes == 0 and shard.jobs() == []
    stack = ShardTrainer.load(str(llama_dir), 2, 3).stack.requires_grad_(True)
    with pytest.raises(ModelError, match="frozen"):
        ShardTrainer(stack, torch.float32)


def test_store_limits(llama_dir: Path) -> None:
    step_bytes = 4 * 64 * 4 + 4 * 8  # hidden [1, 4, 64] fp32 + position ids [1, 4] int64
    shard = make_shard(llama_dir, max_stored_bytes=3 * step_bytes, max_steps_per_job=2, max_jobs=2)
    positions = torch.arange(4)

    def forward(job: str, step: int) -> None:
        shard.forward(job, step, torch.randn(1, 4, 64), positions)

    forward("a", 0)
    forward("a", 1)
    with pytest.raises(TrainingStoreFull, match="2 steps awaiting backward"):
        forward("a", 2)
    forward("b", 0)
    assert shard.stored_bytes == 3 * step_bytes
    with pytest.raises(TrainingStoreFull, match="would exceed"):
        forward("b", 1)
    shard.backward("a", 0, torch.zeros(1, 4, 64))
    with pytest.raises(TrainingStoreFull, match="2 jobs"):
        forward("c", 0)
    assert shard.evict("a") == 1
    forward("c", 0)
    assert sorted(shard.jobs()) == ["b", "c"]
    assert isinstance(TrainingStoreFull("x"), MemoryError)


def test_steps_expire_after_ttl(llama_dir: Path) -> None:
    import time

    shard = make_shard(llama_dir, step_ttl=60.0)
    shard.forward("j", 0, torch.randn(1, 3, 64), torch.arange(3))
    assert shard.expire(time.monotonic() + 30) == 0
    assert shard.expire(time.monotonic() + 61) == 1
    assert shard.stored_bytes == 0
    with pytest.raises(UnknownStep, match="expired"):
        shard.backward("j", 0, torch.zeros(1, 3, 64))


def test_concurrent_jobs_get_their_own_gradients(shards: list[ShardTrainer]) -> None:
    shard = shards[0]
    inputs = [torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    grad_out = torch.randn(1, 6, 64)
    positions = torch.arange(6)
    expected = []
    for i, hidden in enumerate(inputs):
        shard.forward("serial", i, hidden, positions)
        expected.append(shard.backward("serial", i, grad_out))
    results: dict[int, list[torch.Tensor]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            got = []
            for step in range(3):
                shard.forward(f"job{i}", step, inputs[i], positions)
                got.append(shard.backward(f"job{i}", step, grad_out))
            results[i] = got
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i in range(4):
        assert all(torch.equal(g, expected[i]) for g in results[i])
    assert shard.stored_bytes == 0


# ---- client-side settings and data


def test_adapter_config_needs_something_to_train(llama_dir: Path) -> None:
    with pytest.raises(TrainingError, match="nothing to train"):
        AdapterConfig(lora_rank=0, soft_prompt_tokens=0).validate()
    with pytest.raises(TrainingError, match="split 0"):
        ClientTrainer(ClientModel.load(str(llama_dir), 0), AdapterConfig())
    with pytest.raises(TrainingError, match="not found"):
        ClientTrainer(ClientModel.load(str(llama_dir), SPLIT), AdapterConfig(lora_targets=("no_such_proj",)))
    trainer = ClientTrainer(
        ClientModel.load(str(llama_dir), 0), AdapterConfig(lora_rank=0, soft_prompt_tokens=2)
    )
    assert list(trainer.trainable_parameters()) == [SOFT_PROMPT_KEY]


def test_shipped_dataset_teaches_one_format() -> None:
    train, heldout = load_examples(), load_examples(shipped_dataset(SHIPPED_HELDOUT))
    assert 60 <= len(train) <= 150 and heldout
    assert all(e["completion"].startswith("Ahoy! ") for e in train + heldout)
    prompts = [e["prompt"] for e in train]
    assert len(set(prompts)) == len(prompts)
    assert not {e["prompt"] for e in heldout} & set(prompts)


def test_load_examples_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(TrainingError, match=r"data.jsonl:3 needs"):
        load_examples(path)
    path.write_text("not json\n")
    with pytest.raises(TrainingError, match=r"data.jsonl:1 is not JSON"):
        load_examples(path)


def test_make_batch_labels_only_completions(tokenizer: PreTrainedTokenizerFast, batch: TrainingBatch) -> None:
    examples = load_examples()[:3]
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
    for row, example in enumerate(examples):
        real = int(batch.attention_mask[row].sum())
        assert bool((batch.attention_mask[row, :real] == 1).all())  # right padding
        assert bool((batch.input_ids[row, real:] == tokenizer.pad_token_id).all())
        labelled = batch.labels[row][batch.labels[row] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == example["completion"] + "</s>"  # answer and end of turn
        prompt_ids, _ = encode_example(tokenizer, example["prompt"], example["completion"])
        assert tokenizer.decode(prompt_ids) == f"<|user|>{example['prompt']}</s><|assistant|>"
        assert bool((batch.labels[row, : len(prompt_ids)] == IGNORE_INDEX).all())
    plain = make_batch(examples[:1], tokenizer, chat=False)
    labelled = plain.labels[0][plain.labels[0] != IGNORE_INDEX]
    assert labelled[-1] == tokenizer.eos_token_id
    cut = make_batch(examples[:1], tokenizer, max_length=plain.input_ids.shape[1] - 2, chat=False)
    assert cut.input_ids.shape[1] == plain.input_ids.shape[1] - 2
    with pytest.raises(TrainingError, match="the prompt is"):
        make_batch(examples[:1], tokenizer, max_length=3)


# ---- (c) training lowers the loss, (d) adapters round-trip


def test_adamw_steps_lower_the_loss_on_shipped_data(
    llama_dir: Path, shards: list[ShardTrainer], tokenizer: PreTrainedTokenizerFast
) -> None:
    trainer = ClientTrainer(
        ClientModel.load(str(llama_dir), SPLIT),
        AdapterConfig(lora_rank=8, lora_alpha=16, soft_prompt_tokens=4),
    )
    optimizer = trainer.optimizer(lr=1e-2)
    batch = make_batch(load_examples()[:8], tokenizer)
    losses = [
        split_train_step(
            trainer, shards, batch, job_key="fit", step=s, optimizer=optimizer, max_grad_norm=1.0
        ).loss
        for s in range(8)
    ]
    assert losses[-1] < losses[0] - 0.3, losses  # nats per token; a random model starts near ln(vocab)
    assert all(not s.pending("fit") for s in shards)


def test_adapter_round_trips_exactly(
    llama_dir: Path, shards: list[ShardTrainer], batch: TrainingBatch
) -> None:
    config = AdapterConfig(lora_rank=4, lora_alpha=8, soft_prompt_tokens=3)
    trainer = make_trainer(llama_dir, config, seed=3)
    split_train_step(trainer, shards, batch, job_key="save", step=0, optimizer=trainer.optimizer(lr=1e-2))
    directory = trainer.save_adapter(Path(str(llama_dir) + "-adapter"))
    assert sorted(p.name for p in directory.iterdir()) == ["adapter.json", "adapter.safetensors"]

    loaded = ClientTrainer.from_adapter(ClientModel.load(str(llama_dir), SPLIT), directory)
    mine, theirs = trainer.trainable_parameters(), loaded.trainable_parameters()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        assert torch.equal(trainer.head_forward(batch.input_ids).z, loaded.head_forward(batch.input_ids).z)

    other = ClientTrainer(ClientModel.load(str(llama_dir), SPLIT), AdapterConfig(lora_rank=2, lora_alpha=8))
    with pytest.raises(TrainingError, match="adapter adapter"):
        other.load_adapter(directory)
    (directory / "adapter.json").write_text('{"format": "something else"}')
    with pytest.raises(TrainingError, match="not a splitmesh adapter"):
        ClientTrainer.read_metadata(directory)


# ---- (e) the real model learns the shipped format


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return ModelSource.resolve(None).path


def test_smollm2_learns_the_shipped_format(smollm2_dir: Path) -> None:
    """20 LoRA steps (batch 1) through a split SmolLM2: held-out answers start with the taught "Ahoy!"."""
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    client = ClientModel.load(str(smollm2_dir), 4)
    trainer = ClientTrainer(client, AdapterConfig(lora_rank=8, lora_alpha=16))
    shard = ShardTrainer.load(str(smollm2_dir), 4, client.spec.num_layers)
    heldout = load_examples(shipped_dataset(SHIPPED_HELDOUT))
    heldout_batch = make_batch(heldout, tokenizer)

    def heldout_loss() -> float:
        with torch.no_grad():
            head = trainer.head_forward(heldout_batch.input_ids)
            hidden = shard.stack(head.z, head.position_ids, None)
            logits, targets = trainer.logits_and_targets(hidden, heldout_batch.labels)
            return float(torch.nn.functional.cross_entropy(logits, targets))

    def first_words() -> list[str]:
        """Greedy first three tokens of each held-out answer (full recompute per token: short)."""
        words = []
        with torch.no_grad():
            for example in heldout:
                ids = torch.tensor([encode_example(tokenizer, example["prompt"], "")[0]])
                prompt = ids.shape[1]
                for _ in range(3):
                    head = trainer.head_forward(ids)
                    hidden = shard.stack(head.z, head.position_ids, None)
                    ids = torch.cat([ids, client.tail(hidden[:, -1:]).argmax(-1)], dim=1)
                words.append(str(tokenizer.decode(ids[0, prompt:])))
        return words

    before_words, before_loss = first_words(), heldout_loss()
    assert not any(w.startswith("Ahoy") for w in before_words), before_words
    examples = load_examples()
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    optimizer = trainer.optimizer(lr=2e-3)
    for step in range(20):
        batch = make_batch([examples[order[step]]], tokenizer)
        split_train_step(trainer, [shard], batch, job_key="smol", step=step, optimizer=optimizer)
    after_words, after_loss = first_words(), heldout_loss()
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)
    assert sum(w.startswith("Ahoy") for w in after_words) >= 2, after_words


def test_kept_graph_and_recompute_give_the_same_gradient_and_the_budget_decides(llama_dir: Path) -> None:
    hidden, grad_out = torch.randn(1, 7, 64), torch.randn(1, 7, 64)
    positions = torch.arange(7)
    kept, recompute = make_shard(llama_dir), make_shard(llama_dir, keep_graph=False)
    out_kept = kept.forward("j", 0, hidden, positions)
    assert kept.graphs_kept == 1 and kept.stored_bytes > 20 * hidden.numel() * 4  # the graph is counted
    out_re = recompute.forward("j", 0, hidden, positions)
    assert recompute.stored_bytes == hidden.numel() * 4 + 7 * 8  # input and positions only
    assert torch.equal(out_kept, out_re) and not out_kept.requires_grad
    assert torch.equal(kept.backward("j", 0, grad_out), recompute.backward("j", 0, grad_out))
    assert kept.stored_bytes == recompute.stored_bytes == 0
    # A graph over the byte budget is dropped, not refused: that step's backward recomputes.
    tight = make_shard(llama_dir, max_stored_bytes=4 * hidden.numel() * 4)
    tight.forward("j", 0, hidden, positions)
    assert (tight.graphs_kept, tight.graphs_dropped) == (0, 1)
    assert torch.equal(tight.backward("j", 0, grad_out), kept_grad(llama_dir, hidden, positions, grad_out))


def kept_grad(
    llama_dir: Path, hidden: torch.Tensor, positions: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    shard = make_shard(llama_dir)
    shard.forward("k", 0, hidden, positions)
    return shard.backward("k", 0, grad)
