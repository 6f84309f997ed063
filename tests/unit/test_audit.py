"""Audits must pass honest nodes (other threads, chunking, dtype) and catch wrong work.

Honest and cheating nodes are simulated by driving ShardRunner.forward directly, as a node does; the
verifier goes through splitmesh.audit. SmolLM2 gives real hidden states (teacher-forced through the
client's head) for the dtype cases; tiny random models cover the structural and fine-grained cases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from splitmesh.audit import (
    AuditError,
    BadTranscript,
    Comparison,
    Step,
    Tolerance,
    UnsupportedDTypePair,
    audit_transcript,
    compare_step,
    compare_transcript,
    judge,
    replay_transcript,
)
from splitmesh.errors import SplitmeshError
from splitmesh.model.client import ClientModel
from splitmesh.model.runner import ShardRunner
from splitmesh.model.source import ModelSource
from splitmesh.wire import decode_frame, encode_frame
from tests.model_fixtures import save_random_model, tiny_gpt2_config, tiny_llama_config

SHARD = (4, 13)  # a middle shard of the common SmolLM2 plan [0, 4, 13, 22, 30]
PREFILL = 16  # tokens in the first step; every later step carries one token
STEPS = 100  # steps per SmolLM2 transcript (two transcripts: 200 audited steps per dtype pair)
TEXTS = [
    "The printing press was invented in the fifteenth century. It allowed books to be produced quickly "
    "and cheaply, which spread literacy across Europe. Before it, books were copied by hand, often by "
    "monks working in monasteries, and a single book could take months to finish. The new machines "
    "used movable metal type, oil-based ink and a screw press adapted from those used to make wine. "
    "Within fifty years, millions of books had been printed, and ideas travelled faster than ever. "
    "Pamphlets, newspapers and maps followed, and scholars could compare identical copies of a text.",
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into "
    "chemical energy. Chlorophyll absorbs mostly blue and red light and reflects green, which is why "
    "leaves look green. Water is split, oxygen is released, and carbon dioxide from the air is fixed "
    "into sugars in a cycle of reactions named after Melvin Calvin. Nearly all life on Earth depends "
    "on this process, directly or indirectly, for food and for the oxygen in the atmosphere. The "
    "reactions that need light take place in the thylakoid membranes, while the sugars are built in "
    "the stroma around them, using the energy carried by two small molecules, ATP and NADPH.",
]


# ------------------------------------------------------------------------------------------ helpers


def run_node(
    runner: ShardRunner, steps: list[Step], *, threads: int | None = None, tokenwise: bool = False
) -> list[torch.Tensor]:
    """What a node computes for a job's steps; `tokenwise` feeds every step one token at a time."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    outputs = []
    try:
        for start, hidden in steps:
            x = hidden.to(runner.dtype)
            pieces = [x[:, i : i + 1] for i in range(x.shape[1])] if tokenwise else [x]
            outs, position = [], start
            for piece in pieces:
                positions = torch.arange(position, position + piece.shape[1])
                outs.append(runner.forward("job", piece, positions))
                position += piece.shape[1]
            outputs.append(torch.cat(outs, dim=1))
    finally:
        runner.close("job")
        torch.set_num_threads(before)
    return outputs


def through_frames(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Recorded outputs as a verifier gets them: encoded to frames and decoded again."""
    return [decode_frame(encode_frame(y, {"step": i})).tensor for i, y in enumerate(outputs)]


def split_steps(z: torch.Tensor, n_steps: int, prefill: int) -> list[Step]:
    """A prefill of `prefill` tokens, then single-token steps: n_steps steps in all."""
    steps: list[Step] = [(0, z[:, :prefill])]
    steps += [(p, z[:, p : p + 1]) for p in range(prefill, prefill + n_steps - 1)]
    return steps


def noisy(x: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """x plus random noise whose norm is `fraction` of each token's norm."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    noise *= fraction * x.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
    return (x.float() + noise).to(x.dtype)


def garbage(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Random tokens with x's per-token norms."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (noise * x.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)).to(x.dtype)


# ------------------------------------------------------------------------------------------ SmolLM2


@pytest.fixture(scope="module")
def smol_dir() -> str:
    return str(ModelSource.resolve(None).path)


@pytest.fixture(scope="module")
def transcripts(smol_dir: str) -> list[list[Step]]:
    """Two jobs' inputs to shard [4, 13): the client's Z (fp32) on public text, split into steps."""
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    client = ClientModel.load(smol_dir, SHARD[0])
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": TEXTS[0]}], add_generation_prompt=True, tokenize=False
    )
    # With and without the chat template (whose first token is BOS): their first positions differ.
    ids_list = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (str(chat), TEXTS[1])]
    out = []
    for ids in ids_list:
        n = PREFILL + STEPS - 1
        assert len(ids) >= n, "the test text is too short for the number of steps"
        input_ids = torch.tensor([ids[:n]])
        with torch.inference_mode():
            z = client.head(input_ids, torch.arange(n).unsqueeze(0))  # [1, n, hidden]
        out.append(split_steps(z, STEPS, PREFILL))
    return out


@pytest.fixture(scope="module")
def fp32_runner(smol_dir: str) -> ShardRunner:
    return ShardRunner.load(smol_dir, *SHARD)


@pytest.fixture(scope="module")
def bf16_runner(smol_dir: str) -> ShardRunner:
    return ShardRunner.load(smol_dir, *SHARD, dtype="bfloat16")


def bf16_steps(steps: list[Step]) -> list[Step]:
    return [(p, x.to(torch.bfloat16)) for p, x in steps]


def test_200_honest_fp32_steps_pass(transcripts: list[list[Step]], fp32_runner: ShardRunner) -> None:
    """A node on one thread with its prefill fed token by token vs a two-thread verifier."""
    audited = 0
    for steps in transcripts:
        outputs = through_frames(run_node(fp32_runner, steps, threads=1, tokenwise=True))
        verdict = audit_transcript(fp32_runner, steps, outputs, "float32")
        assert not verdict.is_fraud, verdict.reason
        assert len(verdict.comparisons) == len(steps)
        for c in verdict.comparisons:  # each step judged on its own too
            assert not judge([c], Tolerance.for_dtypes("float32", "float32")).is_fraud, c
            audited += 1
    assert audited == 2 * STEPS


def test_200_honest_bf16_steps_pass_a_fp32_verifier(
    transcripts: list[list[Step]], fp32_runner: ShardRunner, bf16_runner: ShardRunner
) -> None:
    audited = 0
    tolerance = Tolerance.for_dtypes("bfloat16", "float32")
    for steps in map(bf16_steps, transcripts):
        outputs = through_frames(run_node(bf16_runner, steps))
        assert all(y.dtype == torch.bfloat16 for y in outputs)
        verdict = audit_transcript(fp32_runner, steps, outputs, "bfloat16")
        assert not verdict.is_fraud, verdict.reason
        assert len(verdict.comparisons) == len(steps)
        for c in verdict.comparisons:
            assert not judge([c], tolerance).is_fraud, c
            audited += 1
    assert audited == 2 * STEPS


def test_honest_bf16_node_passes_a_bf16_verifier(
    transcripts: list[list[Step]], bf16_runner: ShardRunner
) -> None:
    steps = bf16_steps(transcripts[0])[:30]
    outputs = run_node(bf16_runner, steps, threads=1, tokenwise=True)
    verdict = audit_transcript(bf16_runner, steps, outputs, torch.bfloat16)
    assert not verdict.is_fraud, verdict.reason


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "layers",
    [(SHARD[0], SHARD[1] - 1), (SHARD[0] + 1, SHARD[1]), (SHARD[0], (SHARD[0] + SHARD[1]) // 2)],
    ids=["skip-last-layer", "skip-first-layer", "skip-second-half"],
)
def test_skipped_layers_are_fraud(
    smol_dir: str,
    transcripts: list[list[Step]],
    fp32_runner: ShardRunner,
    dtype: str,
    layers: tuple[int, int],
) -> None:
    """A node that runs only some of its layers; bf16 is the hard case (its own noise is largest)."""
    cheater = ShardRunner.load(smol_dir, *layers, dtype=dtype)
    for steps in transcripts:
        steps = [(p, x.to(cheater.dtype)) for p, x in steps[:12]]
        verdict = audit_transcript(fp32_runner, steps, run_node(cheater, steps), dtype)
        assert verdict.is_fraud, verdict.reason


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_garbage_is_fraud_on_every_step(
    transcripts: list[list[Step]],
    fp32_runner: ShardRunner,
    bf16_runner: ShardRunner,
    dtype: str,
) -> None:
    node = fp32_runner if dtype == "float32" else bf16_runner
    steps = [(p, x.to(node.dtype)) for p, x in transcripts[0][:10]]
    honest = run_node(node, steps)
    expected = replay_transcript(fp32_runner, steps)
    tolerance = Tolerance.for_dtypes(dtype, "float32")
    for i in range(len(steps)):
        outputs = list(honest)
        outputs[i] = garbage(outputs[i], seed=i)
        verdict = judge(compare_transcript(expected, outputs, dtype), tolerance)
        assert verdict.is_fraud and verdict.worst_step == i, verdict


@pytest.mark.parametrize("fraction", [1e-2, 1e-3])
def test_tampered_relay_from_fp32_node_is_fraud(
    transcripts: list[list[Step]], fp32_runner: ShardRunner, fraction: float
) -> None:
    """Noise added to what the node forwards (its recorded output), or to its input before computing."""
    steps = transcripts[1][:12]
    honest = run_node(fp32_runner, steps)
    tampered_output = [noisy(y, fraction, seed=i) for i, y in enumerate(honest)]
    assert audit_transcript(fp32_runner, steps, tampered_output, "float32").is_fraud
    tampered_input = run_node(fp32_runner, [(p, noisy(x, fraction, seed=7 + p)) for p, x in steps])
    assert audit_transcript(fp32_runner, steps, tampered_input, "float32").is_fraud
    assert not audit_transcript(fp32_runner, steps, honest, "float32").is_fraud  # the control


def test_large_tamper_from_bf16_node_is_fraud(
    transcripts: list[list[Step]], fp32_runner: ShardRunner, bf16_runner: ShardRunner
) -> None:
    """bf16 noise hides tampering of ~1% (see the bench); a 10% perturbation is caught."""
    steps = bf16_steps(transcripts[0])[:20]
    honest = run_node(bf16_runner, steps)
    tampered = [noisy(y, 0.1, seed=i) for i, y in enumerate(honest)]
    assert audit_transcript(fp32_runner, steps, tampered, "bfloat16").is_fraud
    assert not audit_transcript(fp32_runner, steps, honest, "bfloat16").is_fraud


# ------------------------------------------------------------------------------------------ tiny models


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tiny_llama_config(), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tiny_gpt2_config(), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture()
def tiny(llama_dir: Path) -> Iterator[tuple[ShardRunner, list[Step], list[torch.Tensor]]]:
    """Runner for layers [1, 5) of a random Llama, a 12-step job and an honest node's outputs."""
    runner = ShardRunner.load(str(llama_dir), 1, 5)
    z = torch.randn(1, 20, runner.hidden_size, generator=torch.Generator().manual_seed(3))
    steps = split_steps(z, 12, 9)
    yield runner, steps, run_node(runner, steps)
    assert runner.sessions() == []  # audits never leave a session open


def test_replay_equals_one_uncached_forward(
    tiny: tuple[ShardRunner, list[Step], list[torch.Tensor]],
) -> None:
    runner, steps, _ = tiny
    outputs = replay_transcript(runner, steps)
    whole = torch.cat([x for _, x in steps], dim=1)
    with torch.inference_mode():
        reference = runner.stack(whole, torch.arange(whole.shape[1]).unsqueeze(0), None)
    torch.testing.assert_close(torch.cat(outputs, dim=1), reference, rtol=1e-5, atol=1e-5)
    assert [y.shape[1] for y in outputs] == [x.shape[1] for _, x in steps]


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_skipping_any_single_layer_is_fraud_in_fp32(llama_dir: Path, gpt2_dir: Path, model: str) -> None:
    """Every layer of a random model matters more than fp32 noise: drop each one in turn."""
    path = str(llama_dir if model == "llama" else gpt2_dir)
    start, end = 1, 5
    verifier = ShardRunner.load(path, start, end)
    z = torch.randn(1, 14, verifier.hidden_size, generator=torch.Generator().manual_seed(5))
    steps = split_steps(z, 8, 7)
    honest = run_node(ShardRunner.load(path, start, end), steps, threads=1, tokenwise=True)
    assert not audit_transcript(verifier, steps, honest, "float32").is_fraud
    for skipped in range(start, end):
        cheater = ShardRunner.load(path, start, end)
        kept = [layer for i, layer in enumerate(cheater.stack.layers) if start + i != skipped]
        first = start if skipped != start else start + 1
        cheater.stack = type(cheater.stack)(
            cheater.stack.config, cheater.stack.arch, first, kept, cheater.stack.rotary
        )
        verdict = audit_transcript(verifier, steps, run_node(cheater, steps), "float32")
        assert verdict.is_fraud, (skipped, verdict.reason)


def test_want_last_outputs_are_compared_with_the_last_position(
    tiny: tuple[ShardRunner, list[Step], list[torch.Tensor]],
) -> None:
    runner, steps, outputs = tiny
    assert steps[0][1].shape[1] > 1  # the prefill step has several positions
    last_only = [y[:, -1:] for y in outputs]
    assert not audit_transcript(runner, steps, last_only, "float32").is_fraud
    first_instead = [outputs[0][:, :1], *last_only[1:]]  # a position, but not the last one
    assert audit_transcript(runner, steps, first_instead, "float32").is_fraud
    wrong_last = [garbage(last_only[0], seed=1), *last_only[1:]]
    verdict = audit_transcript(runner, steps, wrong_last, "float32")
    assert verdict.is_fraud and verdict.worst_step == 0


def _mutate_prefill(outputs: list[torch.Tensor], value: float) -> list[torch.Tensor]:
    out = [y.clone() for y in outputs]
    out[0][0, 2, 5] = value
    return out


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("missing last step", lambda o: o[:-1]),
        ("missing middle step", lambda o: o[:3] + o[4:]),
        ("extra step", lambda o: [*o, o[-1]]),
        ("no outputs", lambda o: []),
        ("hidden size", lambda o: [o[0][..., :-1], *o[1:]]),
        ("tokens", lambda o: [o[0][:, :-1], *o[1:]]),
        ("batch", lambda o: [o[0].expand(2, -1, -1), *o[1:]]),
        ("rank", lambda o: [o[0][0], *o[1:]]),
        ("dtype bf16 for declared fp32", lambda o: [o[0].to(torch.bfloat16), *o[1:]]),
        ("dtype float16", lambda o: [*o[:-1], o[-1].to(torch.float16)]),
        ("integer output", lambda o: [*o[:-1], o[-1].round().to(torch.int64)]),
        ("NaN", lambda o: _mutate_prefill(o, math.nan)),
        ("Inf", lambda o: _mutate_prefill(o, math.inf)),
        ("-Inf", lambda o: _mutate_prefill(o, -math.inf)),
    ],
)
def test_defective_outputs_are_fraud(
    tiny: tuple[ShardRunner, list[Step], list[torch.Tensor]], case: str, mutate: object
) -> None:
    runner, steps, outputs = tiny
    assert not audit_transcript(runner, steps, outputs, "float32").is_fraud
    bad = mutate(outputs)  # type: ignore[operator]
    verdict = audit_transcript(runner, steps, bad, "float32")
    assert verdict.is_fraud, case
    assert verdict.reason


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("gap in positions", lambda s: [s[0], *s[2:]]),
        ("does not start at 0", lambda s: s[1:]),
        ("wrong hidden size", lambda s: [(s[0][0], s[0][1][..., :-1]), *s[1:]]),
        ("NaN input", lambda s: [(s[0][0], s[0][1] * math.nan), *s[1:]]),
        ("empty", lambda s: []),
    ],
)
def test_unreplayable_transcripts_raise_on_replay_and_are_fraud_in_an_audit(
    tiny: tuple[ShardRunner, list[Step], list[torch.Tensor]], case: str, mutate: object
) -> None:
    """The transcript is the audited node's record: serving one that cannot be replayed is no escape."""
    runner, steps, outputs = tiny
    bad = mutate(steps)  # type: ignore[operator]
    with pytest.raises(BadTranscript):
        replay_transcript(runner, bad)
    verdict = audit_transcript(runner, bad, outputs, "float32")
    assert verdict.is_fraud and "cannot be audited" in verdict.reason, case


@pytest.mark.parametrize("dtype", ["float16", torch.float16, "no_such_dtype"])
def test_outputs_in_a_dtype_no_node_runs_are_fraud(
    tiny: tuple[ShardRunner, list[Step], list[torch.Tensor]], dtype: str | torch.dtype
) -> None:
    runner, steps, outputs = tiny
    declared = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype, torch.float16)
    verdict = audit_transcript(runner, steps, [y.to(declared) for y in outputs], dtype)
    assert verdict.is_fraud and "cannot be audited" in verdict.reason, verdict


# ------------------------------------------------------------------------------------------ comparison


def test_compare_step_statistics_by_hand() -> None:
    expected = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]]])  # token norms 5, 2, 1
    got = expected + torch.tensor([[[0.0, 0.05], [0.0, 0.0], [-0.5, 0.0]]])
    c = compare_step(expected, got, step=4)
    assert c.step == 4 and c.tokens == 3 and c.problem is None
    approx = pytest.approx  # the inputs are float32: 4.05 carries a relative rounding of ~1e-8
    assert c.token_rel == approx((0.01, 0.0, 0.5), rel=1e-5)
    assert c.worst_token == 2 and c.worst_token_rel == approx(0.5)
    assert c.mean_token_rel == approx(0.51 / 3, rel=1e-5)
    assert c.max_abs == approx(0.5)
    assert c.rel_l2 == approx(math.hypot(0.05, 0.5) / math.sqrt(30), rel=1e-5)
    dot = 3 * 3 + 4 * 4.05 + 2 * 2 + 1 * 0.5
    assert c.cosine == approx(dot / (math.sqrt(30) * math.sqrt(9 + 4.05**2 + 4 + 0.25)), rel=1e-6)
    same = compare_step(expected, expected.clone())
    assert same.worst_token_rel == 0.0 and same.cosine == pytest.approx(1.0)


def test_compare_step_zero_expected_token_makes_any_difference_infinite() -> None:
    expected = torch.zeros(1, 1, 4)
    assert compare_step(expected, expected.clone()).worst_token_rel == 0.0
    assert compare_step(expected, torch.full((1, 1, 4), 1e-6)).worst_token_rel == math.inf


def test_compare_step_refuses_a_non_finite_recomputation() -> None:
    expected = torch.ones(1, 2, 4)
    expected[0, 1, 0] = math.nan
    with pytest.raises(AuditError):
        compare_step(expected, torch.ones(1, 2, 4))


def _comparison(step: int, token_rel: list[float]) -> Comparison:
    expected = torch.ones(1, len(token_rel), 4)
    got = expected * (1 + torch.tensor(token_rel).view(1, -1, 1))  # per-token relative error = token_rel
    return compare_step(expected, got, step=step)


def test_judge_token_bound() -> None:
    tol = Tolerance(token_rel=0.1, mean_rel=1.0)
    assert not judge([_comparison(0, [0.05]), _comparison(1, [0.099, 0.0])], tol).is_fraud
    verdict = judge([_comparison(0, [0.05]), _comparison(1, [0.0, 0.101])], tol)
    assert verdict.is_fraud and verdict.worst_step == 1 and "token 1" in verdict.reason


def test_judge_mean_bound_catches_small_systematic_errors() -> None:
    tol = Tolerance(token_rel=0.1, mean_rel=0.03, min_tokens=16)
    steps = [_comparison(i, [0.02, 0.02]) for i in range(8)]
    assert not judge(steps, tol).is_fraud
    steps = [_comparison(i, [0.04, 0.04]) for i in range(8)]  # every token below 0.1, the mean is not
    verdict = judge(steps, tol)
    assert verdict.is_fraud and "mean" in verdict.reason
    assert not judge(steps[:7], tol).is_fraud  # 14 tokens: too few for the mean to mean anything


def test_judge_counts_steps() -> None:
    tol = Tolerance(token_rel=0.1, mean_rel=0.1)
    steps = [_comparison(i, [0.0]) for i in range(3)]
    assert not judge(steps, tol, expected_steps=3).is_fraud
    assert judge(steps, tol, expected_steps=4).is_fraud
    assert judge([steps[0], steps[2]], tol, expected_steps=3).is_fraud
    assert not judge([steps[0], steps[2]], tol).is_fraud  # a sample of steps
    assert judge([steps[0], steps[0], steps[1]], tol).is_fraud
    with pytest.raises(AuditError):
        judge([], tol)


def test_tolerances_are_symmetric_ordered_and_limited_to_known_dtypes() -> None:
    fp32 = Tolerance.for_dtypes("float32", torch.float32)
    mixed = Tolerance.for_dtypes("bfloat16", "float32")
    assert mixed == Tolerance.for_dtypes(torch.float32, torch.bfloat16)
    assert fp32.token_rel < Tolerance.for_dtypes("bfloat16", "bfloat16").token_rel
    assert fp32.token_rel < mixed.token_rel and fp32.mean_rel < mixed.mean_rel
    for tol in (fp32, mixed):
        assert 0 < tol.mean_rel <= tol.token_rel
    with pytest.raises(UnsupportedDTypePair):
        Tolerance.for_dtypes("float16", "float32")
    assert issubclass(AuditError, SplitmeshError) and issubclass(AuditError, ValueError)


def _steps(outputs: dict[int, bytes], inputs: dict[int, bytes] | None = None) -> list:
    """Transcript steps carrying only what relay_mismatch reads: step numbers and digests."""
    from splitmesh.audit.transcript import TranscriptStep

    empty = torch.zeros(1, 1, 1)
    steps = sorted(set(outputs) | set(inputs or {}))
    return [
        TranscriptStep(
            s,
            0,
            None,  # type: ignore[arg-type]
            empty,
            empty,
            (inputs or {}).get(s, b""),
            outputs.get(s, b""),
        )
        for s in steps
    ]


def test_a_relay_of_another_tensor_than_the_committed_one_is_fraud() -> None:
    from splitmesh.audit.transcript import relay_mismatch

    committed = _steps({0: b"a", 1: b"b", 2: b"c"})
    assert relay_mismatch(committed, _steps({}, {0: b"a", 1: b"b", 2: b"c"})) is None
    assert relay_mismatch(committed, _steps({}, {0: b"a", 1: b"X", 2: b"c"})) == 1
    # A relay of a step the node never committed is a relay of a tensor it did not commit.
    assert relay_mismatch(committed, _steps({}, {0: b"a", 1: b"b", 2: b"c", 3: b"d"})) == 3


def test_a_step_the_next_hop_never_received_is_not_fraud() -> None:
    """A node stalled (SIGSTOP) mid-job finishes a step after the client failed over and the next hop's
    session expired: it committed one output more than the next hop received. That is a broken link, not a
    signed relay of another tensor (seen in tests/integration/test_failover.py as a fraud verdict against
    the stalled node before this rule)."""
    from splitmesh.audit.transcript import relay_mismatch

    committed = _steps({0: b"a", 1: b"b", 2: b"c", 3: b"d"})
    assert relay_mismatch(committed, _steps({}, {0: b"a", 1: b"b", 2: b"c"})) is None
    assert relay_mismatch(committed, _steps({}, {})) is None
