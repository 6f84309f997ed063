"""The leakage report (`splitmesh privacy`): its mechanism replay, attacks, determinism and table schema,
on a tiny random-weight Llama (bytes as tokens) so the whole file runs in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from client_sdk.leakage import attacks
from client_sdk.leakage.corpus import Corpus
from client_sdk.leakage.features import SplitFeatures, chunk_tokens, load_tokenizer
from client_sdk.leakage.mechanism import Mechanism
from client_sdk.leakage.report import ReportConfig, run_report, table_of, write_table
from client_sdk.privacy import Privatizer, seeded_normal
from splitmesh.leakage_table import LeakageTable, load_table
from splitmesh.model.identity import weights_identity
from splitmesh.model.loader import ModelSpec
from splitmesh.model.source import ModelSource
from splitmesh_cli.main import main
from tests.model_fixtures import save_random_model, tiny_llama_config

DELTA = 1e-5
ENTRY_KEYS = {
    "split", "mechanism", "epsilon", "clip", "next_token_agreement", "perplexity_ratio", "greedy_prefix_kept",
    "prompt_recovery", "output_recovery_greedy", "output_recovery_sampled",
}  # fmt: skip
TOP_KEYS = {"format", "generated_by", "generated_at", "model", "weights_hash", "delta", "seed", "eval_tokens",
            "entries"}  # fmt: skip
RECOVERY_KEYS = {"nearest", "learned", "optimization", "best", "best_attack"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tiny_llama_config(), tmp_path_factory.mktemp("tiny-llama"))


def small_config(model: Path, **overrides: Any) -> ReportConfig:
    values: dict[str, Any] = dict(
        model=str(model), splits=(0, 1), epsilons=(math.inf, 10.0), seq_len=32, eval_tokens=124,
        train_tokens=3100, opt_rows=2, opt_steps=10, gen_tokens=4,
    )  # fmt: skip
    values.update(overrides)
    return ReportConfig(**values)


def features_of(model: Path, split: int) -> SplitFeatures:
    spec = ModelSpec.open(str(model))
    tokenizer = load_tokenizer(spec)
    corpus = Corpus.load()
    train = chunk_tokens(tokenizer, corpus.train, 32, 3100, 1)
    evaluation = chunk_tokens(tokenizer, corpus.eval, 32, 124, 1)
    return SplitFeatures.compute(spec, split, tokenizer, train, evaluation)


def test_corpus_train_and_eval_are_disjoint() -> None:
    corpus = Corpus.load()
    assert corpus.train and corpus.eval
    assert not set(corpus.train) & set(corpus.eval)


def test_mechanism_replays_the_privatizer_with_the_same_noise() -> None:
    torch.manual_seed(0)
    z = torch.randn(1, 12, 16) * torch.logspace(-1, 1, 12).view(1, 12, 1)  # norms below and above the clip
    epsilon, clip = 50.0, 2.0
    expected = Privatizer(epsilon, DELTA, clip, public_prefix=1, noise_source=seeded_normal(7))(z, 0)
    got = Mechanism(epsilon, DELTA, clip).release(z, torch.Generator().manual_seed(7), public_prefix=1)
    assert torch.equal(got[:, 0], z[:, 0])  # the public BOS passes unchanged
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(Mechanism(math.inf, DELTA, clip).release(z, torch.Generator()), z)


def test_attacks_recover_every_token_without_noise_at_split_0(tiny_dir: Path) -> None:
    features = features_of(tiny_dir, 0)
    cand = attacks.build_candidates(features, frequent=4096, bos=1)
    mech = Mechanism(math.inf, DELTA, features.clip)
    released = mech.release(features.eval_z, torch.Generator())
    truth = features.eval_ids[:, 1:].reshape(-1)
    flat = attacks.private_vectors(released)
    assert float((attacks.nearest(flat, cand, mech) == truth).double().mean()) > 0.99
    assert float((attacks.learned(flat, cand, mech) == truth).double().mean()) > 0.99
    rows = released[:2]
    guess = attacks.optimization(features.model, rows, cand, mech, 1, steps=5, topk=8)
    assert float((guess == truth[: guess.numel()]).double().mean()) > 0.99


def test_leakage_falls_as_epsilon_falls(tiny_dir: Path) -> None:
    report = run_report(small_config(tiny_dir, splits=(1,), epsilons=(math.inf, 100.0, 3.0)))
    best = [e["prompt_recovery"]["best"] for e in report["entries"]]
    learned = [e["prompt_recovery"]["learned"] for e in report["entries"]]
    assert best[0] >= best[1] >= best[2]
    assert learned[0] > learned[2] + 0.3
    agreement = [e["next_token_agreement"] for e in report["entries"]]
    assert agreement[0] == 1.0 and agreement[2] < agreement[0]
    assert report["entries"][0]["perplexity_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_report_is_deterministic_given_a_seed(tiny_dir: Path) -> None:
    first = run_report(small_config(tiny_dir, splits=(1,), epsilons=(30.0,), seed=3))
    again = run_report(small_config(tiny_dir, splits=(1,), epsilons=(30.0,), seed=3))
    other = run_report(small_config(tiny_dir, splits=(1,), epsilons=(30.0,), seed=4))
    assert first["entries"] == again["entries"]
    assert first["entries"] != other["entries"]  # the seed really drives the noise


def check_schema(table: dict[str, Any]) -> None:
    assert set(table) == TOP_KEYS
    assert table["format"] == 1 and table["weights_hash"].startswith("0x")
    assert isinstance(table["eval_tokens"], int) and table["eval_tokens"] > 0
    for entry in table["entries"]:
        assert set(entry) == ENTRY_KEYS
        assert set(entry["prompt_recovery"]) == RECOVERY_KEYS
        assert entry["epsilon"] == "inf" or isinstance(entry["epsilon"], float)
        rates = [entry[k] for k in ("next_token_agreement", "greedy_prefix_kept")]
        rates += [entry["output_recovery_greedy"], entry["output_recovery_sampled"]]
        rates += [entry["prompt_recovery"][k] for k in ("nearest", "learned", "optimization", "best")]
        assert all(0.0 <= r <= 1.0 for r in rates)
        rec = entry["prompt_recovery"]
        assert (
            rec["best"] == max(rec["nearest"], rec["learned"], rec["optimization"]) == rec[rec["best_attack"]]
        )
        assert entry["perplexity_ratio"] > 0 and entry["clip"] > 0
    LeakageTable.from_json(table)  # the reader the receipts and the coordinator use accepts it


def test_written_table_matches_the_schema_and_the_reader(tiny_dir: Path, tmp_path: Path) -> None:
    report = run_report(small_config(tiny_dir, splits=(0,), epsilons=(math.inf, 10.0)))
    path = write_table(report, tmp_path / "table.json")
    table = json.loads(path.read_text())
    check_schema(table)
    assert table == table_of(report)
    assert (
        table["weights_hash"]
        == "0x" + weights_identity(ModelSpec.open(str(tiny_dir)).source).model_hash.hex()
    )
    loaded = load_table(str(path))
    assert loaded is not None
    entry = loaded.lookup(0, 20.0)
    assert entry is not None and math.isinf(entry.epsilon)  # the next larger measured epsilon


def test_shipped_table_matches_the_schema() -> None:
    path = Path(__file__).resolve().parents[2] / "splitmesh" / "data" / "leakage_table.json"
    if not path.exists():
        pytest.skip("no table shipped yet; run `splitmesh privacy --write-table`")
    check_schema(json.loads(path.read_text()))


def test_cli_json_on_a_tiny_model(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "frontier.png"
    argv = ["privacy", "--model", str(tiny_dir), "--split", "0", "1", "--epsilons", "inf", "30"]
    code = main([*argv, "--eval-tokens", "62", "--json", "--seed", "1", "--plot", str(plot)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    check_schema(table_of(report))
    assert [(e["split"], e["epsilon"]) for e in report["entries"]] == [
        (0, "inf"),
        (0, 30.0),
        (1, "inf"),
        (1, 30.0),
    ]
    assert report["eval_tokens"] == 62 and report["seed"] == 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_to_ship_a_table_from_private_text(tiny_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "mine.txt"
    text.write_text("my own text\n")
    assert main(["privacy", "--model", str(tiny_dir), "--text", str(text), "--write-table"]) == 2


@pytest.fixture(scope="module")
def smollm2_spec() -> ModelSpec:
    return ModelSpec.open(str(ModelSource.resolve(None).path))


def test_smollm2_attacks_invert_embeddings_and_lose_ground_to_noise(smollm2_spec: ModelSpec) -> None:
    """The real tokenizer and weights, shipped text, small sizes (split 2 features on ~1.5k tokens)."""
    tokenizer = load_tokenizer(smollm2_spec)
    corpus = Corpus.load()
    train = chunk_tokens(tokenizer, corpus.train, 32, 1550, 1)
    evaluation = chunk_tokens(tokenizer, corpus.eval, 32, 124, 1)
    truth = evaluation[:, 1:].reshape(-1)
    rates: dict[tuple[int, float], float] = {}
    for split in (0, 2):
        features = SplitFeatures.compute(smollm2_spec, split, tokenizer, train, evaluation)
        cand = attacks.build_candidates(features, frequent=1024, bos=1)
        for epsilon in (math.inf, 10.0):
            mech = Mechanism(epsilon, DELTA, features.clip)
            flat = attacks.private_vectors(mech.release(features.eval_z, torch.Generator().manual_seed(0)))
            rates[split, epsilon] = float((attacks.learned(flat, cand, mech) == truth).double().mean())
            if split == 0 and math.isinf(epsilon):
                assert float((attacks.nearest(flat, cand, mech) == truth).double().mean()) > 0.99
    assert rates[0, math.inf] > 0.99
    assert rates[2, math.inf] > rates[2, 10.0]
    assert rates[0, math.inf] > rates[0, 10.0]


def test_cli_says_when_the_eval_text_is_too_short(tiny_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("too short\n")
    assert (
        main(["privacy", "--model", str(tiny_dir), "--split", "0", "--epsilons", "inf", "--text", str(text)])
        == 2
    )
