"""The explorer page in headless Chromium, against a real `splitmesh coordinator run` on a real chain.

A seeded activity driver fills a hardhat chain with jobs (finalized, cancelled, audited), a coordinator
process indexes it and serves the page, and the browser checks what the page shows against the JSON API
it is built from: the jobs table (and a job submitted while the page is open appearing without a reload),
the filters, a job's route with its commitments, payments and audit votes, the declared privacy with its
leakage (measured or not), and the nodes. Screenshots of three pages go to pytest's tmp dir and to
.splitmesh/screenshots/ for a human to look at.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Response, expect, sync_playwright
from web3 import Web3

from splitmesh.chain import AuditStatus, JobStatus, LocalChain, Marketplace
from splitmesh.jobmeta import JobMeta
from splitmesh.paths import project_root
from splitmesh_cli.wait import wait_until
from tests.integration.chain_activity import CLIENT_ACCOUNTS, ETHER, GWEI, Activity, deploy_court_market

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "the explorer test drives Debian's Chromium at /usr/bin/chromium; `apt-get install chromium`",
        allow_module_level=True,
    )

SEED = 1
MIN_STEPS, MAX_STEPS = 60, 300  # random actions before the page opens (stops once every kind of job exists)
JOB_PAGE = 25  # rows per jobs page (JOB_PAGE in coordinator/static/app.js)
UI_TIMEOUT_MS = 15_000  # the page polls every 2 s and the coordinator syncs every 0.3 s
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOTS = project_root() / ".splitmesh" / "screenshots"  # git-ignored
# Read directly, not through splitmesh.leakage_table: the page's numbers are checked against the file.
LEAKAGE_TABLE = json.loads((project_root() / "splitmesh" / "data" / "leakage_table.json").read_text())
MEASURED_SPLIT, MEASURED_EPSILON = 4, 30.0  # a point the shipped table measured exactly
MEASURED_CLIP = 50.0  # declared by the measured job, as the SDK declares its clip
MEASURED_NODE_ACCOUNT = 10  # dev account serving the table's model (the activity uses 1..9)


# ------------------------------------------------------------------ the coordinator process


@dataclass
class Coordinator:
    """A `splitmesh coordinator run` child process and the URL it serves."""

    process: subprocess.Popen[str]
    url: str = ""
    output: list[str] = field(default_factory=list)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/api/jobs/{job_id}")

    def all_jobs(self) -> list[dict[str, Any]]:
        return self.get("/api/jobs?limit=500")["items"]

    def wait_synced(self, block: int, timeout: float = 30.0) -> None:
        def synced() -> bool:
            at = self.get("/api/status")["synced_block"]
            return at is not None and at >= block

        wait_until(
            synced,
            timeout=timeout,
            interval=0.2,
            message=lambda: (
                f"index at {self.get('/api/status')['synced_block']}, chain at {block}: {self.output}"
            ),
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_coordinator(rpc_url: str, market: str, home: Path, timeout: float = 60.0) -> Coordinator:
    """Start the daemon on a free port (--port 0) and wait until its API answers."""
    cmd = [sys.executable, "-m", "splitmesh_cli.main", "coordinator", "run", "--rpc-url", rpc_url]
    cmd += ["--market", market, "--db", str(home / "index.sqlite"), "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--no-keeper", "--poll", "0.3"]
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "SPLITMESH_HOME": str(home)},
    )
    coordinator = Coordinator(process)
    listening = threading.Event()

    def read() -> None:  # drains the pipe for the process's whole life
        assert process.stdout is not None
        for line in process.stdout:
            coordinator.output.append(line.rstrip())
            if found := re.search(r"listening on (http://127\.0\.0\.1:\d+)/", line):
                coordinator.url = found.group(1)
                listening.set()

    threading.Thread(target=read, name="coordinator-output", daemon=True).start()

    def answering() -> bool:
        # The line is printed once the site is up; check that the API answers too.
        assert process.poll() is None, "the coordinator exited:\n" + "\n".join(coordinator.output)
        if not listening.is_set():
            return False
        try:
            coordinator.get("/api/status")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    try:
        wait_until(
            answering,
            timeout=timeout,
            interval=0.1,
            message=lambda: "the coordinator did not start:\n" + "\n".join(coordinator.output),
        )
        return coordinator
    except BaseException:
        coordinator.stop()
        raise


# ------------------------------------------------------------------ fixtures


@dataclass
class World:
    w3: Web3
    market: Marketplace
    activity: Activity
    coordinator: Coordinator
    measured_job: int  # on the leakage table's model, at a measured (split, epsilon); not in activity.jobs


def submit_measured_job(activity: Activity) -> int:
    """A job whose declared setting the shipped leakage table measured: the activity's model has made-up
    weights, so the table's model is registered (same weights hash, one remote shard after the client's
    layers) with one node, and a client submits a job on it. Sends from the activity's senders, which
    cache nonces. Returns the job id."""
    market, senders = activity.market, activity.senders
    layers = 30  # SmolLM2-135M's decoder layers; the client runs the first MEASURED_SPLIT
    model_id, _ = market.register_model(
        senders[0],
        LEAKAGE_TABLE["model"],
        bytes.fromhex(LEAKAGE_TABLE["weights_hash"].removeprefix("0x")),
        layers,
        [0, MEASURED_SPLIT, layers],
    )
    node = senders[MEASURED_NODE_ACCOUNT]
    market.register_node(node, model_id, 1, "http://127.0.0.1:9010", 3 * GWEI, stake=2 * ETHER)
    meta = JobMeta(epsilon=MEASURED_EPSILON, delta=1e-5, clip=MEASURED_CLIP, split=MEASURED_SPLIT).to_json()
    tokens, max_price = 8, 10 * GWEI
    escrow = market.escrow_for(tokens, max_price, 1)
    job = market.submit_job(senders[CLIENT_ACCOUNTS[0]], model_id, 1, tokens, max_price, escrow, meta)
    return job.job_id


def _has_every_kind(activity: Activity) -> bool:
    market, ids = activity.market, [job_id for job_id, _, _ in activity.jobs]
    statuses = {market.get_job(job_id).status for job_id in ids}
    audited = any(market.get_audit(job_id).status == AuditStatus.RESOLVED for job_id in ids)
    return {JobStatus.FINALIZED, JobStatus.CANCELLED} <= statuses and audited


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("explorer")
    with LocalChain(log_path=home / "hardhat.log") as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        market, model_id = deploy_court_market(w3)
        activity = Activity(market, model_id, seed=SEED)
        activity.register_nodes()
        for step in range(1, MAX_STEPS + 1):
            activity.step()
            if step >= MIN_STEPS and step % 10 == 0 and _has_every_kind(activity):
                break
        else:
            pytest.fail(f"seed {SEED}: no finalized, cancelled and audited job after {MAX_STEPS} steps")
        measured_job = submit_measured_job(activity)
        coordinator = start_coordinator(chain.rpc_url, market.deployment.market, home)
        try:
            coordinator.wait_synced(w3.eth.block_number)
            yield World(w3, market, activity, coordinator, measured_job)
        finally:
            coordinator.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    problems: list[str] = []

    def console(msg: ConsoleMessage) -> None:
        # Chromium logs every 4xx answer; the API's are expected in some tests (and shown in the banner).
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(f"console: {msg.text}")

    def response(r: Response) -> None:
        if r.status >= 400 and "/api/" not in r.url:
            problems.append(f"{r.status} for {r.url}")

    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on("console", console)
    page.on("response", response)
    yield page
    context.close()
    assert not problems, problems  # no uncaught exception, console error or missing file on any page


# ------------------------------------------------------------------ helpers


def data(locator: Locator, *keys: str) -> list[Any]:
    """The data-* attributes of every element the locator matches, in document order."""
    js = "(els, keys) => els.map(e => keys.length === 1 ? e.dataset[keys[0]] : keys.map(k => e.dataset[k]))"
    return locator.evaluate_all(js, list(keys))


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    page.evaluate("document.fonts.ready.then(() => true)")
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
    assert path.stat().st_size > 10_000, f"{path} is only {path.stat().st_size} bytes"
    return path


def job_rows(page: Page, table: str = "#jobs-table") -> Locator:
    return page.locator(f"{table} tbody tr[data-job-id]")


def table_entry(split: int, epsilon: float) -> dict[str, Any]:
    """The shipped table's entry measured at exactly this split and epsilon."""
    (entry,) = [
        e
        for e in LEAKAGE_TABLE["entries"]
        if e["split"] == split and e["mechanism"] == "plain" and float(e["epsilon"]) == epsilon
    ]
    return entry


def percent(fraction: float) -> int:
    """A fraction as the page rounds it (JavaScript's Math.round: halves go up, unlike Python's round)."""
    return math.floor(100 * fraction + 0.5)


def check_leakage(page: Page, job: dict[str, Any]) -> str:
    """The job page's leakage paragraph says what the API's `leakage` says; returns its data-leakage."""
    leak = job["leakage"]
    paragraph = page.locator("[data-leakage]")
    expect(paragraph).to_have_count(1)
    kind = {"measured": "measured", "not measured": "not-measured"}[leak["source"]]
    expect(paragraph).to_have_attribute("data-leakage", kind)
    if kind == "not-measured":
        expect(paragraph).to_have_text(f"Leakage not measured: {leak['why']}.")
        return kind
    shown = [leak["prompt_recovery"], leak["output_recovery_greedy"], leak["next_token_agreement"]]
    epsilon = leak["measured_at_epsilon"]  # a number, or "inf"
    epsilon = f"{epsilon:g}" if isinstance(epsilon, float) else str(epsilon)
    expect(paragraph).to_contain_text(f"(epsilon {epsilon}, split {leak['split']})")
    expect(paragraph).to_contain_text(f"({leak['best_attack']})")
    assert [int(p) for p in re.findall(r"(\d+)%", paragraph.inner_text())] == [percent(x) for x in shown]
    return kind


# ------------------------------------------------------------------ tests


def test_the_index_holds_every_kind_of_job(world: World) -> None:
    c = world.coordinator
    assert c.get("/api/status")["jobs"] == len(world.activity.jobs) + 1  # and the measured job
    for status in ("finalized", "cancelled"):
        assert c.get(f"/api/jobs?status={status}")["total"] >= 1, status
    audits = [audit for j in c.all_jobs() if (audit := c.job(j["job_id"])["audit"])]
    assert any(panel["verdict"] for audit in audits for panel in audit["panels"])


def test_jobs_table_updates_live(world: World, page: Page, tmp_path: Path) -> None:
    c = world.coordinator
    page.goto(c.url + "/")
    expect(page.locator("header .brand")).to_contain_text("splitmesh")
    expect(page.locator("#status")).to_contain_text(f"chain {world.w3.eth.chain_id}")
    total = c.get("/api/jobs")["total"]
    rows = job_rows(page)
    expect(rows).to_have_count(min(total, JOB_PAGE))
    expect(page.locator("#pager")).to_contain_text(f"of {total} jobs")
    assert [int(i) for i in data(rows, "jobId")] == [j["job_id"] for j in c.all_jobs()[:JOB_PAGE]]

    # A job submitted while the page is open shows up at the top, without a reload.
    page.evaluate("window.__sameDocument = true")
    world.activity.submit()
    new_id = world.activity.jobs[-1][0]
    row = page.locator(f'#jobs-table tr[data-job-id="{new_id}"]')
    expect(row.locator(f'a[data-job-id="{new_id}"]')).to_be_visible()
    expect(row.locator(".badge")).to_have_text("open")
    assert page.evaluate("window.__sameDocument") is True
    assert int(data(rows, "jobId")[0]) == new_id
    expect(rows).to_have_count(min(total + 1, JOB_PAGE))
    screenshot(page, tmp_path, "jobs")


def test_filters_map_to_the_api_and_errors_show_in_a_banner(world: World, page: Page) -> None:
    c = world.coordinator
    page.goto(c.url + "/#/jobs")
    expect(job_rows(page).first).to_be_visible()
    page.select_option("#f-status", "cancelled")
    cancelled = [j["job_id"] for j in c.get("/api/jobs?status=cancelled")["items"]]
    expect(job_rows(page)).to_have_count(len(cancelled))
    assert [int(i) for i in data(job_rows(page), "jobId")] == cancelled
    assert "status=cancelled" in page.url  # the filter survives a reload and can be shared

    node = c.get("/api/nodes")["items"][0]["address"]
    page.fill("#f-node", node)
    both = c.get(f"/api/jobs?status=cancelled&node={node}")["items"]
    expect(job_rows(page)).to_have_count(len(both))
    page.click("#f-clear")
    expect(job_rows(page)).to_have_count(min(c.get("/api/jobs")["total"], JOB_PAGE))

    expect(page.locator("#banner")).to_be_hidden()
    page.fill("#f-client", "0x1234")
    page.press("#f-client", "Enter")
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("is not an address")


def test_job_page_draws_the_route_with_commitments_payments_and_votes(
    world: World, page: Page, tmp_path: Path
) -> None:
    c = world.coordinator
    jobs = c.all_jobs()
    audited = [job for j in jobs if (job := c.job(j["job_id"]))["audit"]]

    # The page has most to show for a split verdict: one hop convicted, another cleared.
    def interest(job: dict[str, Any]) -> tuple[bool, bool]:
        verdicts = {panel["verdict"] for panel in job["audit"]["panels"]}
        return "fraud" in verdicts and "honest" in verdicts, "fraud" in verdicts

    job = max(audited, key=interest)
    newer = sum(1 for j in jobs if j["job_id"] > job["job_id"])
    page.goto(c.url + f"/#/jobs?offset={newer // JOB_PAGE * JOB_PAGE}")
    page.locator(f'#jobs-table a[data-job-id="{job["job_id"]}"]').click()
    expect(page).to_have_url(re.compile(rf"#/jobs/{job['job_id']}$"))

    hops = page.locator("#route .hop")
    expect(hops).to_have_count(len(job["route"]))
    assert data(hops, "node") == job["route"]
    for hop in job["hops"]:
        box = page.locator(f'#route .hop[data-position="{hop["position"]}"]')
        expect(box.locator(".commit-in")).to_have_attribute("data-hash", hop["input_commitment"] or "")
        expect(box.locator(".commit-out")).to_have_attribute("data-hash", hop["output_commitment"] or "")
        expect(box.locator(".price")).to_have_attribute("data-wei", hop["price_wei"])
        expect(box.locator(".paid")).to_have_attribute("data-wei", hop["paid_wei"])
        expect(box.locator(".slashed")).to_have_attribute("data-wei", hop["slashed_wei"])
    assert data(page.locator("#route .connector-link"), "link") == [json.dumps(x) for x in job["links"]]

    for panel in job["audit"]["panels"]:
        box = page.locator(f'#route .hop[data-position="{panel["position"]}"] .audit')
        expect(box).to_have_attribute("data-verdict", panel["verdict"] or "pending")
        assert data(box.locator(".vote"), "verifier", "vote") == [
            [v["verifier"], v["vote"]] for v in panel["votes"]
        ]

    expect(page.locator("#payments .escrow")).to_have_attribute("data-wei", job["escrow_wei"])
    expect(page.locator("#payments .refund")).to_have_attribute("data-wei", job["refund_wei"])
    expect(page.locator("#summary")).to_contain_text(job["status"])
    epsilon = (job["declared"] or {}).get("epsilon")
    if epsilon is not None:  # JSON numbers print as JavaScript prints them: 8.0 -> "8"
        text = f"{epsilon:g}" if isinstance(epsilon, float) else str(epsilon)
        expect(page.locator('[data-param="epsilon"]')).to_have_text(text)
    # The activity's model has made-up weights: no table measured it, and the page says so and why.
    assert job["leakage"]["source"] == "not measured"
    assert job["leakage"]["why"].startswith("no leakage table for this model")
    assert check_leakage(page, job) == "not-measured"
    expect(page.locator("#audit")).to_be_visible()
    expect(page.locator("#tx-table tbody tr")).to_have_count(len(job["transactions"]))
    screenshot(page, tmp_path, "job-audited")


def test_job_page_shows_the_measured_leakage_from_the_shipped_table(world: World, page: Page) -> None:
    job = world.coordinator.job(world.measured_job)
    assert job["declared"] == {
        "epsilon": MEASURED_EPSILON,
        "delta": 1e-5,
        "clip": MEASURED_CLIP,
        "split": MEASURED_SPLIT,
        "sdk": "splitmesh/1",
    }
    entry = table_entry(MEASURED_SPLIT, MEASURED_EPSILON)
    leak = job["leakage"]
    assert leak["source"] == "measured"
    assert (leak["split"], leak["measured_at_epsilon"]) == (MEASURED_SPLIT, MEASURED_EPSILON)
    assert (leak["prompt_recovery"], leak["best_attack"]) == (
        entry["prompt_recovery"]["best"],
        entry["prompt_recovery"]["best_attack"],
    )
    assert leak["output_recovery_greedy"] == entry["output_recovery_greedy"]
    assert leak["next_token_agreement"] == entry["next_token_agreement"]

    page.goto(world.coordinator.url + f"/#/jobs/{world.measured_job}")
    expect(page.locator('[data-param="split"]')).to_have_text(str(MEASURED_SPLIT))
    assert check_leakage(page, job) == "measured"


def test_nodes_page_lists_every_node(world: World, page: Page, tmp_path: Path) -> None:
    c = world.coordinator
    nodes = c.get("/api/nodes")
    page.goto(c.url + "/")
    page.click('nav a[data-nav="nodes"]')
    rows = page.locator("#nodes-table tbody tr[data-address]")
    expect(rows).to_have_count(nodes["total"])
    assert data(rows, "address") == [n["address"] for n in nodes["items"]]
    screenshot(page, tmp_path, "nodes")

    busiest = max(nodes["items"], key=lambda n: n["jobs_served"])
    page.locator(f'#nodes-table tr[data-address="{busiest["address"]}"] a.addr').click()
    expect(page.locator("#node-address")).to_have_text(busiest["address"])
    recent = c.get(f"/api/nodes/{busiest['address']}")["recent_jobs"]
    expect(job_rows(page, "#node-jobs-table")).to_have_count(len(recent))
