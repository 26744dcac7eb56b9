"""The fault matrix: disturb real pipeline runs, rerun until they succeed, and compare every table
and export with an undisturbed run, row by row.

Each scenario gets a fresh DAGSTER_HOME and storage, and one real OpenAI-compatible HTTP server
(`tests.pipeline_model_server`, a deterministic model of all three stages with fault
injection) that stays up across its runs, so the response cache keeps its engine identity. The
pipeline runs as a real subprocess (`lpt demo`), which the matrix kills with SIGKILL, starves of
disk space, turns read-only under it, or runs twice at once.

Counted per scenario: runs (including the disturbed ones); rows lost (rows of the undisturbed
run missing afterwards); rows duplicated (rows afterwards that the undisturbed run does not have,
repeats included); crashes (a run that failed other than by the injected fault, a file that
cannot be read, a partial file left by a clean failure, or reruns that never succeed).

`python -m faults.matrix [--only NAME ...] [--seed N]` prints the table and ends with
`N scenarios, L rows lost, D duplicated, C crashes`; it exits 1 unless all three are zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from tests.pipeline_model_server import PipelineModelServer

REPO = Path(__file__).resolve().parent.parent
LPT = Path(sys.executable).parent / "lpt"
SOURCE = "sample?limit=6&shard_size=2"
CHECKPOINT = 2  # results per cache write
CONCURRENCY = 2  # HTTP calls at once: few, so a kill lands with work both cached and in flight
TIMEOUT_S = 1.0  # the engine's per-call timeout; "timeout" faults sleep longer than this
RUN_LIMIT_S = 300.0
MAX_RERUNS = 3
TABLES = (
    "shard_manifest",
    "captions",
    "captions_quarantine",
    "mcqs",
    "mcqs_quarantine",
    "simple_cots",
    "long_cots",
    "verified",
    "sft_samples",
    "dpo_pairs",
)
ROLES = ("ask", "vlm", "reasoner")
# What a clean failure from an injected fault says; anything else that fails is a crash.
ENGINE_FAILED = "requests failed after the engine's retries"
NO_SPACE = "No space left on device"
READ_ONLY = "Read-only file system"


def config_text(store: Path, base_url: str) -> str:
    engines = "".join(
        f'[engines.{role}]\nkind = "openai"\nmodel = "fake-{role}"\nbase_url = "{base_url}"\n'
        f"flush_every = {CHECKPOINT}\nmax_concurrency = {CONCURRENCY}\ntimeout_s = {TIMEOUT_S}\nmax_retries = 3\nbackoff_initial_s = 0.05\n"
        for role in ROLES
    )
    return f"""
storage = "{store / "data"}"
exports = "{store / "exports"}"
[ask]
questions_per_image = 2
sampling = {{ n = 1, temperature = 0.7, top_p = 0.95, max_tokens = 400 }}
[think]
caption_stand_in = true
sampling = {{ n = 2, temperature = 0.8, top_p = 0.9, max_tokens = 64 }}
[think_harder]
retry_max_tokens = 128
sampling = {{ n = 2, temperature = 0.7, top_p = 0.8, top_k = 50, max_tokens = 64 }}
[select]
sft_per_mcq = 4
max_pairs_per_type_per_mcq = 2
{engines}"""


class Faults:
    """The server's fault plan: per role, behaviours for chosen request numbers, an optional
    persistent behaviour, and a hook called on a chosen request (to kill the run mid-request)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.at: dict[tuple[str, int], Any] = {}
        self.persistent: dict[str, Any] = {}
        self.hooks: dict[tuple[str, int], Callable[[], None]] = {}

    def rule(self, body: dict[str, Any]) -> Any:
        role = str(body.get("model", "")).removeprefix("fake-")
        with self.lock:
            self.counts[role] += 1
            self.counts["any"] += 1
            number = self.counts[role]
            hook = self.hooks.pop((role, number), None) or self.hooks.pop(("any", self.counts["any"]), None)
            behaviour = self.persistent.get(role) or self.at.get((role, number))
        if hook is not None:
            hook()
        return behaviour


def mount_tmpfs(folder: Path, size: str) -> None:
    """Mount a real tmpfs of `size` on `folder`: storage that can really fill up or turn
    read-only (root ignores chmod, so only a mount gives a real read-only disk)."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"cannot mount a tmpfs on {folder} ({done.stderr.strip() or done.returncode}): the storage "
            "faults need root, as CI has; run the tests and `make faults` as root"
        )


@dataclass
class Outcome:
    rc: int
    log: str
    killed: bool = False
    expected: str | None = None  # the message a clean failure from the injected fault carries

    @property
    def crashed(self) -> bool:
        if self.killed or self.rc == 0:
            return False
        return self.expected is None or self.expected not in self.log


@dataclass
class Workspace:
    root: Path
    faults: Faults = field(default_factory=Faults)
    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)  # what had been written when each kill landed
    processes: list[subprocess.Popen] = field(default_factory=list)
    mounted: bool = False
    server: PipelineModelServer | None = None
    _runs: int = 0

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def data(self) -> Path:
        return self.store / "data"

    def __enter__(self) -> Workspace:
        self.store.mkdir(parents=True)
        (self.root / "home").mkdir()
        self.server = PipelineModelServer(
            rule=self.faults.rule, timeout_sleep_s=TIMEOUT_S + 0.5, retry_after="0.2"
        ).start()
        (self.root / "lpt.toml").write_text(config_text(self.store, self.server.base_url))
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:  # interrupted: no run outlives the matrix
            if process.poll() is None:
                kill(process)
                process.wait()
        if self.server is not None:
            self.server.stop()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.store)], check=False)

    def mount_tmpfs(self) -> None:
        """A real small filesystem for the storage: it can fill up and turn read-only."""
        mount_tmpfs(self.store, "64m")
        self.mounted = True

    def start(self) -> subprocess.Popen:
        self._runs += 1
        log = open(self.root / f"run-{self._runs}.log", "w")  # noqa: SIM115 - closed in finish()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.root / "home"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        command = [str(LPT), "demo", "--json", "--config", str(self.root / "lpt.toml"), "--source", SOURCE]
        process = subprocess.Popen(
            command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        process.log_file = log  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def finish(self, process: subprocess.Popen, *, killed: bool = False, expected: str | None = None) -> Outcome:
        try:
            rc = process.wait(timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            kill(process)
            rc = process.wait()
            self.problems.append("a run hung and was stopped")
        process.log_file.close()  # type: ignore[attr-defined]
        text = Path(process.log_file.name).read_text(errors="replace")  # type: ignore[attr-defined]
        outcome = Outcome(rc=rc, log=text, killed=killed and rc == -signal.SIGKILL, expected=expected)
        self.outcomes.append(outcome)
        return outcome

    def run(self, *, expected: str | None = None) -> Outcome:
        return self.finish(self.start(), expected=expected)

    def kill_when(self, condition: Callable[[], bool], *, jitter_s: float = 0.0) -> Outcome:
        """Start a run and SIGKILL its process group as soon as `condition` holds."""
        process = self.start()
        deadline = time.monotonic() + RUN_LIMIT_S
        while not condition():
            if process.poll() is not None or time.monotonic() > deadline:
                self.problems.append("the run ended before the kill point")
                return self.finish(process)
            time.sleep(0.005)
        time.sleep(jitter_s)
        kill(process)
        self.kills.append(progress(self))
        return self.finish(process, killed=True)

    def kill_on_request(self, role: str, number: int, jitter_s: float = 0.0) -> Outcome:
        """Start a run and SIGKILL it while the server is answering its n-th request of a role
        ("any": of all roles), or `jitter_s` later."""
        process = self.start()
        fired = threading.Event()
        self.faults.counts.clear()

        def hook() -> None:
            time.sleep(jitter_s)
            kill(process)
            self.kills.append(progress(self))
            fired.set()

        self.faults.hooks[(role, number)] = hook
        outcome = self.finish(process, killed=True)
        if not fired.is_set():
            self.problems.append(f"the run never sent {role} request {number}")
        return outcome

    def rerun_until_success(self) -> None:
        for _ in range(MAX_RERUNS):
            if self.outcomes and self.outcomes[-1].rc == 0:
                return
            self.run()
        if not self.outcomes or self.outcomes[-1].rc != 0:
            self.problems.append(f"no success after {MAX_RERUNS} reruns")


def kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.exists() else []


def progress(ws: Workspace) -> str:
    """Where a run had got to: the last table with a shard written, and the cached batches."""
    written = [t for t in TABLES if files(ws.data / t, "*.parquet")]
    exported = (ws.store / "exports").exists()
    batches = "/".join(str(cache_batches(ws, role)) for role in ROLES)
    return f"{'exports' if exported else written[-1] if written else 'nothing'} written, cache batches {batches}"


def cache_batches(ws: Workspace, role: str) -> int:
    return len(files(ws.data / "response_cache", f"fake-{role}-*/*/*/part-*.jsonl"))


# ------------------------------------------------------------------------------------ snapshots


def snapshot(ws: Workspace) -> tuple[dict[str, Counter[str]], list[str]]:
    """Every table and export as a multiset of canonical rows (workspace paths neutralised),
    and the files that could not be read."""
    tables: dict[str, Counter[str]] = {}
    corrupt: list[str] = []
    root = str(ws.root)

    def add(name: str, rows: list[Any]) -> None:
        tables[name] = Counter(json.dumps(r, sort_keys=True, default=str).replace(root, "<ws>") for r in rows)

    def read(path: Path, reader: Callable[[Path], list[Any]]) -> None:
        try:
            add(str(path.relative_to(ws.store)), reader(path))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is what we are looking for
            corrupt.append(f"{path.relative_to(ws.store)}: {type(exc).__name__}: {exc}")

    for table in TABLES:
        for path in files(ws.data / table, "*.parquet"):
            read(path, lambda p: pl.read_parquet(p).to_dicts())
    for path in files(ws.data / "response_cache", "*/*/*/part-*.jsonl"):
        try:
            for line in path.read_text().splitlines():
                json.loads(line)
        except Exception as exc:  # noqa: BLE001
            corrupt.append(f"{path.relative_to(ws.store)}: {type(exc).__name__}: {exc}")
    exports = ws.store / "exports"
    ours = lambda p: ".lpt" not in p.relative_to(exports).parts  # noqa: E731 - the exporter's cursor and counts, not data
    for path in filter(ours, files(exports, "**/*.json")):
        read(path, lambda p: (lambda v: v if isinstance(v, list) else [v])(json.loads(p.read_text())))
    for path in filter(ours, files(exports, "**/*.jsonl")):
        read(path, lambda p: [json.loads(line) for line in p.read_text().splitlines()])
    for path in filter(ours, files(exports, "**/*.md")):
        read(path, lambda p: [p.read_text()])
    for path in filter(ours, files(exports, "**/*.parquet")):
        read(path, lambda p: pl.read_parquet(p).to_dicts())
    return tables, corrupt


def compare(baseline: dict[str, Counter[str]], after: dict[str, Counter[str]]) -> tuple[int, int]:
    """(rows lost, rows duplicated or not in the baseline), summed over every table."""
    lost = sum(sum((rows - after.get(name, Counter())).values()) for name, rows in baseline.items())
    extra = sum(sum((rows - baseline.get(name, Counter())).values()) for name, rows in after.items())
    return lost, extra


def partial_files(ws: Workspace) -> list[str]:
    """Temporary files a clean failure should not leave behind."""
    return [str(p.relative_to(ws.store)) for p in ws.store.rglob("*.tmp")] if ws.store.exists() else []


# ------------------------------------------------------------------------------------ scenarios


@dataclass
class Scenario:
    name: str
    kind: str  # "kill", "engine", "concurrent", "storage", "control"
    act: Callable[[Workspace], None]
    needs_root: bool = False


def first_file(folder: str) -> Callable[[Workspace], Callable[[], bool]]:
    return lambda ws: lambda: bool(files(ws.data / folder, "*.parquet"))


def kill_at_file(folder: str) -> Callable[[Workspace], None]:
    def act(ws: Workspace) -> None:
        ws.kill_when(first_file(folder)(ws))
        ws.rerun_until_success()

    return act


def kill_at_batch(role: str, count: int) -> Callable[[Workspace], None]:
    def act(ws: Workspace) -> None:
        ws.kill_when(lambda: cache_batches(ws, role) >= count)
        ws.rerun_until_success()

    return act


def kill_in_request(role: str, number: int) -> Callable[[Workspace], None]:
    def act(ws: Workspace) -> None:
        ws.kill_on_request(role, number)
        ws.rerun_until_success()

    return act


def kill_at_exports(ws: Workspace) -> None:
    ws.kill_when(lambda: (ws.store / "exports").exists())
    ws.rerun_until_success()


def kill_at_random(points: list[tuple[int, float]]) -> Callable[[Workspace], None]:
    """Kill at seeded points: (the n-th request of any stage, a delay after it), one point
    per run, so a kill can also land between stages or in the rerun of a killed run."""

    def act(ws: Workspace) -> None:
        for number, jitter in points:
            ws.kill_on_request("any", number, jitter)
        ws.rerun_until_success()

    return act


def engine_faults(plan: dict[tuple[str, int], Any]) -> Callable[[Workspace], None]:
    """Faults on chosen requests; the engine's retries absorb them, so one run suffices."""

    def act(ws: Workspace) -> None:
        ws.faults.at.update(plan)
        ws.run()
        ws.faults.at.clear()
        ws.rerun_until_success()

    return act


def persistent_fault(role: str, behaviour: Any, after: int) -> Callable[[Workspace], None]:
    """From the role's request `after` on, every request fails: the run must fail cleanly;
    then the server recovers and the rerun completes."""

    def act(ws: Workspace) -> None:
        def start_failing() -> None:
            ws.faults.persistent[role] = behaviour

        ws.faults.hooks[(role, after)] = start_failing
        ws.run(expected=ENGINE_FAILED)
        ws.faults.persistent.clear()
        ws.rerun_until_success()

    return act


def concurrent(stagger_s: float) -> Callable[[Workspace], None]:
    """Two runs of the same shards on one instance and one storage at once."""

    def act(ws: Workspace) -> None:
        first = ws.start()
        time.sleep(stagger_s)
        second = ws.start()
        ws.finish(first)
        ws.finish(second)
        ws.rerun_until_success()

    return act


def disk_full(ws: Workspace) -> None:
    """The storage fills up once stage 2 has begun: the run fails with ENOSPC and writes
    nothing partial; space comes back and the rerun completes."""
    ws.mount_tmpfs()
    filler = ws.store / "filler"
    process = ws.start()
    while not cache_batches(ws, "vlm") and process.poll() is None:
        time.sleep(0.005)
    stats = os.statvfs(ws.store)
    try:
        with open(filler, "wb") as handle:
            handle.write(b"\0" * (stats.f_bavail * stats.f_frsize))
    except OSError:
        pass  # full: that is the point
    ws.finish(process, expected=NO_SPACE)
    ws.problems += [f"partial file {p}" for p in partial_files(ws)]
    filler.unlink()
    ws.rerun_until_success()


def read_only(ws: Workspace) -> None:
    """The storage turns read-only once stage 3 has begun: the run fails with EROFS and writes
    nothing partial; the storage comes back writable and the rerun completes."""
    ws.mount_tmpfs()
    process = ws.start()
    while not cache_batches(ws, "reasoner") and process.poll() is None:
        time.sleep(0.005)
    subprocess.run(["mount", "-o", "remount,ro", str(ws.store)], check=True)
    ws.finish(process, expected=READ_ONLY)
    subprocess.run(["mount", "-o", "remount,rw", str(ws.store)], check=True)
    ws.problems += [f"partial file {p}" for p in partial_files(ws)]
    ws.rerun_until_success()


def undisturbed(ws: Workspace) -> None:
    ws.run()
    ws.run()  # a second run on a complete store changes nothing


def scenarios(seed: int) -> list[Scenario]:
    """The matrix; the random kill points come from `seed` (an undisturbed run sends about 42 requests)."""
    rng = random.Random(seed)
    randoms = [(rng.randint(1, 36), round(rng.uniform(0.0, 0.3), 2)) for _ in range(3)]
    twice = [
        (rng.randint(5, 22), round(rng.uniform(0.0, 0.3), 2)),
        (rng.randint(1, 4), round(rng.uniform(0.0, 0.3), 2)),
    ]
    randoms_scenarios = [
        Scenario(f"kill -9 {j:.2f}s after request {n} (seeded)", "kill", kill_at_random([(n, j)])) for n, j in randoms
    ]
    return [
        Scenario("no fault, run twice", "control", undisturbed),
        Scenario("kill -9 in captions (first shard written)", "kill", kill_at_file("captions")),
        Scenario("kill -9 in mcqs (1st batch cached)", "kill", kill_at_batch("ask", 1)),
        Scenario("kill -9 in mcqs (request 4 in flight)", "kill", kill_in_request("ask", 4)),
        Scenario("kill -9 in simple_cots (1st batch cached)", "kill", kill_at_batch("vlm", 1)),
        Scenario("kill -9 in simple_cots (request 5 in flight)", "kill", kill_in_request("vlm", 5)),
        Scenario("kill -9 in long_cots (3rd batch cached)", "kill", kill_at_batch("reasoner", 3)),
        Scenario("kill -9 in long_cots (request 9 in flight)", "kill", kill_in_request("reasoner", 9)),
        Scenario("kill -9 in verified (first shard written)", "kill", kill_at_file("verified")),
        Scenario("kill -9 in sft_samples (first shard written)", "kill", kill_at_file("sft_samples")),
        Scenario("kill -9 in dpo_pairs (first shard written)", "kill", kill_at_file("dpo_pairs")),
        Scenario("kill -9 in exports", "kill", kill_at_exports),
        *randoms_scenarios,
        Scenario(
            f"kill -9 twice (request {twice[0][0]}, then request {twice[1][0]} of the rerun)",
            "kill",
            kill_at_random(twice),
        ),
        Scenario(
            "500/503 mid-batch in every stage",
            "engine",
            engine_faults({("ask", 2): 500, ("vlm", 3): 503, ("vlm", 4): 500, ("reasoner", 5): 502}),
        ),
        Scenario(
            "dropped connections and malformed bodies",
            "engine",
            engine_faults(
                {("ask", 1): "drop", ("vlm", 2): "malformed", ("reasoner", 3): "drop", ("reasoner", 7): "malformed"}
            ),
        ),
        Scenario(
            "server times out (> timeout_s)",
            "engine",
            engine_faults({("ask", 3): "timeout", ("vlm", 1): "timeout", ("reasoner", 4): "timeout"}),
        ),
        Scenario(
            "429 with Retry-After",
            "engine",
            engine_faults({("ask", 1): 429, ("vlm", 2): 429, ("vlm", 3): 429, ("reasoner", 6): 429}),
        ),
        Scenario("reasoner fails persistently (500), then recovers", "engine", persistent_fault("reasoner", 500, 7)),
        Scenario("ask server unreachable (drops), then recovers", "engine", persistent_fault("ask", "drop", 3)),
        Scenario("two runs of the same shards at once", "concurrent", concurrent(0.0)),
        Scenario("two runs of the same shards, staggered", "concurrent", concurrent(3.0)),
        Scenario("storage full (tmpfs) in stage 2", "storage", disk_full, needs_root=True),
        Scenario("storage read-only (tmpfs remount) in stage 3", "storage", read_only, needs_root=True),
    ]


# ------------------------------------------------------------------------------------ driver


@dataclass
class Result:
    name: str
    kind: str
    runs: int
    lost: int
    duplicated: int
    crashes: int
    notes: list[str]
    seconds: float
    kills: list[str] = field(default_factory=list)


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def run_scenario(scenario: Scenario, baseline: dict[str, Counter[str]], workdir: Path) -> Result:
    started = time.monotonic()
    with Workspace(Path(tempfile.mkdtemp(dir=workdir, prefix="scenario-"))) as ws:
        try:
            scenario.act(ws)
        except Exception as exc:  # noqa: BLE001 - a broken scenario is reported, the matrix goes on
            ws.problems.append(f"the scenario itself failed: {type(exc).__name__}: {exc}")
        after, corrupt = snapshot(ws)
    lost, duplicated = compare(baseline, after)
    crashed = [o for o in ws.outcomes if o.crashed]
    notes = ws.problems + corrupt + [_last_error(o.log) for o in crashed]
    crashes = len(crashed) + len(corrupt) + len(ws.problems)
    return Result(
        scenario.name,
        scenario.kind,
        len(ws.outcomes),
        lost,
        duplicated,
        crashes,
        notes,
        time.monotonic() - started,
        ws.kills,
    )


def _last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


def baseline_snapshot(workdir: Path) -> tuple[dict[str, Counter[str]], float]:
    """The undisturbed run's tables and exports, and how long it took."""
    with Workspace(Path(tempfile.mkdtemp(dir=workdir, prefix="baseline-"))) as ws:
        started = time.monotonic()
        outcome = ws.run()
        seconds = time.monotonic() - started
        if outcome.rc != 0:
            raise SystemExit(f"the undisturbed baseline run failed:\n{outcome.log[-3000:]}")
        tables, corrupt = snapshot(ws)
    if corrupt or not all(
        tables.get(f"data/{t}/sample-train-00000.parquet") for t in ("mcqs", "long_cots", "sft_samples", "dpo_pairs")
    ):
        raise SystemExit(f"the baseline run made too little data to compare: {corrupt}")
    return tables, seconds


def table(results: list[Result]) -> str:
    header = f"{'scenario':<58} {'runs':>4} {'rows lost':>9} {'rows duplicated':>15} {'crashes':>7} {'seconds':>7}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.name:<58} {r.runs:>4} {r.lost:>9} {r.duplicated:>15} {r.crashes:>7} {r.seconds:>7.1f}")
        lines += [f"    killed with {k}" for k in r.kills]
        lines += [f"    ! {note}" for note in r.notes]
    lost, dup, crashes = (sum(getattr(r, k) for r in results) for k in ("lost", "duplicated", "crashes"))
    lines.append(f"{len(results)} scenarios, {lost} rows lost, {dup} duplicated, {crashes} crashes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run the scenarios whose names contain these words")
    parser.add_argument("--seed", type=int, default=5, help="seed for the random kill points")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="lpt-faults-"))
    try:
        baseline, seconds = baseline_snapshot(workdir)
        baseline_rows = sum(sum(c.values()) for c in baseline.values())
        print(f"baseline: {len(baseline)} tables and exports, {baseline_rows} rows, {seconds:.1f}s", flush=True)
        chosen = [s for s in scenarios(args.seed) if not args.only or any(w in s.name for w in args.only)]
        skipped = [s for s in chosen if s.needs_root and not can_mount()]
        chosen = [s for s in chosen if s not in skipped]
        results = []
        for scenario in chosen:
            results.append(run_scenario(scenario, baseline, workdir))
            r = results[-1]
            print(
                f"  {r.name}: runs {r.runs}, lost {r.lost}, duplicated {r.duplicated}, crashes {r.crashes} ({r.seconds:.1f}s)",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    for s in skipped:
        print(f"skipped (needs root to mount a tmpfs): {s.name}")
    print(table(results))
    return 0 if all(r.lost == r.duplicated == r.crashes == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
