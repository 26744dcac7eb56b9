"""Exports that grow by shard: every format written as one part per shard, bound by small index
files, so adding or redoing a shard costs that shard's rows and never the history.

Layout under the export root (a local folder or any fsspec URL):

    llamafactory/dataset_info.json      entries naming the folders below (`file_name: "sft"`)
    llamafactory/{sft,dpo}/SHARD.jsonl  ShareGPT rows
    hf/README.md                        dataset card; its `configs` glob the parts below
    hf/{sft,dpo[,sft_text,dpo_text]}/SHARD.parquet
    lacot/SHARD.json                    LaCoT/LLaVA rows (with each short CoT's reward where scored)
    lacot/bin/SHARD.json                LaCoT's BiN log: rationals, solutions, likelihoods, best_index
    provenance/SHARD.jsonl              one line per exported row
    .lpt/state.json                     the exporter's own: settings, totals, the caller's cursor
    .lpt/shards/SHARD.json              a shard's counts, for the totals

A batch is one generation: `put` writes a shard's parts (replacing any earlier ones), `drop`
removes them (a shard whose checks failed has none), `commit` rewrites the index files from the
running totals and then the state. Totals change by each shard's new counts less its committed
ones; a shard's record keeps the committed counts beside the new ones until the state moves on,
so a batch that dies before `commit` is redone exactly by the next one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from lpt.config import ExportConfig
from lpt.export import hf, lacot, llamafactory, provenance
from lpt.export.common import STATE_DIR, Folder, dump_json, filter_pairs, jsonl, sorted_unique
from lpt.export.stats import Funnel, Stats, shard_stats
from lpt.records import DpoPair, McqScores, SftSample
from lpt.scoring import bin_log_row, rewards_by_cot

LAYOUT = 2  # bump when the layout changes: an export in an older layout is rebuilt once
STATE_FILE = f"{STATE_DIR}/state.json"
SHARDS_DIR = f"{STATE_DIR}/shards"
OWNED_FOLDERS = (llamafactory.FOLDER, hf.FOLDER, lacot.FOLDER, provenance.FOLDER)


class ShardRows(BaseModel):
    """One shard's rows as the pipeline made them, and its funnel for the card."""

    model_config = ConfigDict(frozen=True)
    shard: str
    sft: list[SftSample]
    dpo: list[DpoPair]
    funnel: Funnel = Funnel()
    scores: list[McqScores] = []  # rationale scores, where the shard has them


class ExportState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    layout: int
    fingerprint: str
    generation: int
    cursor: dict[str, Any]  # where the caller's change feed stood; opaque here
    totals: Stats


class ShardRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    generation: int
    stats: Stats | None  # None: the shard has no parts
    committed: Stats | None  # what the state before `generation` counted for this shard


class CommitResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    state: ExportState | None  # None: another batch committed meanwhile, nothing was bound
    written: list[str]
    dropped: list[str]


def _fsspec_reader(path: str) -> bytes:
    import fsspec

    fs, location = fsspec.core.url_to_fs(path)
    with fs.open(location, "rb") as handle:
        return handle.read()


class Exporter:
    """The exports under one root, made with one `ExportConfig`. `read_image` reads an image's
    bytes for the HF export (default: through fsspec, so paths and URLs both work)."""

    def __init__(
        self,
        url: str,
        config: ExportConfig,
        run_info: Mapping[str, object],
        read_image: Callable[[str], bytes] = _fsspec_reader,
    ) -> None:
        self.folder = Folder(url)
        self.config = config
        self.run_info = dict(run_info)
        self.read_image = read_image

    @property
    def fingerprint(self) -> str:
        blob = json.dumps({"layout": LAYOUT, "config": self.config.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def state(self) -> ExportState | None:
        """The committed state, or None when there is none in this layout and settings (the next
        batch must then be a rebuild)."""
        raw = self.folder.read(STATE_FILE)
        if raw is None:
            return None
        state = ExportState.model_validate_json(raw)
        return state if (state.layout, state.fingerprint) == (LAYOUT, self.fingerprint) else None

    def begin(self, rebuild: bool = False) -> ExportBatch:
        """A batch on the committed state; `rebuild` (forced when there is no usable state)
        starts the totals from nothing and, at commit, removes every shard it was not given."""
        self.folder.clear_staging()  # what a killed batch left half-written
        raw = self.folder.read(STATE_FILE)
        previous = ExportState.model_validate_json(raw) if raw is not None else None
        usable = self.state()
        return ExportBatch(self, previous.generation if previous else 0, None if rebuild or usable is None else usable)


def part_paths(shard: str) -> dict[str, str]:
    """Every file a shard may have, by format (whether or not the settings enable it)."""
    if not shard or "/" in shard or "\\" in shard or shard.startswith("."):
        raise ValueError(f"shard key {shard!r} cannot name an export file")
    paths = {
        "llamafactory_sft": f"{llamafactory.FOLDER}/sft/{shard}.jsonl",
        "llamafactory_dpo": f"{llamafactory.FOLDER}/dpo/{shard}.jsonl",
        "lacot": f"{lacot.FOLDER}/{shard}.json",
        "lacot_bin": f"{lacot.FOLDER}/bin/{shard}.json",
        "provenance": f"{provenance.FOLDER}/{shard}.jsonl",
    }
    paths.update({f"hf_{kind}": f"{hf.FOLDER}/{kind}/{shard}.parquet" for kind in hf.config_names(text=True)})
    return paths


class ExportBatch:
    def __init__(self, exporter: Exporter, last_generation: int, base: ExportState | None) -> None:
        self.exporter = exporter
        self.folder = exporter.folder
        self.config = exporter.config
        self.base = base
        self.rebuild = base is None
        self.last_generation = last_generation
        self.generation = last_generation + 1
        self.totals = Stats() if base is None else base.totals
        self.written: list[str] = []
        self.dropped: list[str] = []

    def _committed(self, shard: str) -> Stats | None:
        """What the committed totals count for this shard."""
        if self.base is None:
            return None  # a rebuild counts from nothing
        raw = self.folder.read(f"{SHARDS_DIR}/{shard}.json")
        if raw is None:
            return None
        record = ShardRecord.model_validate_json(raw)
        return record.stats if record.generation <= self.base.generation else record.committed

    def _record(self, shard: str, stats: Stats | None, committed: Stats | None) -> None:
        record = ShardRecord(generation=self.generation, stats=stats, committed=committed)
        self.folder.write(f"{SHARDS_DIR}/{shard}.json", record.model_dump_json())
        self.totals = self.totals + (stats or Stats()) - (committed or Stats())

    def _files(self, rows: ShardRows, sft: Sequence[SftSample], dpo: Sequence[DpoPair]) -> dict[str, bytes | str]:
        """The shard's part files by format key; a format with no rows has no file."""
        config, folder = self.config, self.folder
        files: dict[str, bytes | str] = {}
        lf_base = folder.url_of(llamafactory.FOLDER)
        if sft:
            files["llamafactory_sft"] = jsonl(llamafactory.sft_row(s, lf_base, config.image_paths) for s in sft)
            image_root = config.lacot_image_root or folder.url_of(lacot.FOLDER)
            rewards = rewards_by_cot(rows.scores)
            files["lacot"] = dump_json(
                [lacot.lacot_row(s, image_root, config.lacot_keep_tags, rewards.get(s.cot_id)) for s in sft]
            )
        if rows.scores:
            files["lacot_bin"] = dump_json([bin_log_row(s) for s in sorted(rows.scores, key=lambda s: s.mcq_id)])
        if dpo:
            files["llamafactory_dpo"] = jsonl(llamafactory.dpo_row(p, lf_base, config.image_paths) for p in dpo)
        load_image = hf.image_loader(config.hf_images, self.exporter.read_image)
        for kind in hf.config_names(config.hf_text):
            if kind.startswith("sft") and sft:
                files[f"hf_{kind}"] = hf.parquet_part([hf.sft_record(s, kind, load_image) for s in sft], kind)
            if kind.startswith("dpo") and dpo:
                files[f"hf_{kind}"] = hf.parquet_part([hf.dpo_record(p, kind, load_image) for p in dpo], kind)
        if sft or dpo:
            files["provenance"] = jsonl(provenance.provenance_rows(sft, dpo, self.exporter.run_info, rows.shard))
        return files

    def put(self, rows: ShardRows) -> Stats:
        """Write (or replace) one shard's parts; its formats without rows lose any old file."""
        sft = sorted_unique(rows.sft, "sample_id")
        dpo = sorted_unique(filter_pairs(rows.dpo, self.config.pair_types), "pair_id")
        committed = self._committed(rows.shard)
        files = self._files(rows, sft, dpo)
        sizes = {key.removeprefix("hf_"): len(data) for key, data in files.items() if key.startswith("hf_")}
        stats = shard_stats(sft, dpo, rows.funnel, sizes)
        for key, path in part_paths(rows.shard).items():
            if key in files:
                self.folder.write(path, files[key])
            else:
                self.folder.remove(path)
        self._record(rows.shard, stats, committed)
        self.written.append(rows.shard)
        return stats

    def drop(self, shard: str) -> bool:
        """Remove a shard's parts (it failed its checks, or lost its rows); whether it had any."""
        committed = self._committed(shard)
        removed = [self.folder.remove(path) for path in part_paths(shard).values()]
        had = any(removed) or committed is not None
        if had or self.folder.read(f"{SHARDS_DIR}/{shard}.json") is not None:
            self._record(shard, None, committed)
        if had:
            self.dropped.append(shard)
        return had

    def known_shards(self) -> list[str]:
        """Shards with a record (exported now or before): what a rebuild must reconcile."""
        return [name.removesuffix(".json") for name in self.folder.names(SHARDS_DIR) if name.endswith(".json")]

    def _sweep(self, keep: Collection[str]) -> None:
        """A rebuild owns its folders: whatever is not a part of `keep` or an index file goes
        (parts of shards not given, files of an older layout such as save_to_disk folders)."""
        wanted = {path for shard in keep for path in part_paths(shard).values()}
        indexes = set(self._index_files())
        for top in OWNED_FOLDERS:
            for path in self.folder.fs.find(self.folder.path(top), withdirs=False):
                relative = path[len(self.folder.root) + 1 :]
                if relative not in wanted and relative not in indexes:
                    self.folder.fs.rm_file(path)
        for shard in set(self.known_shards()) - set(keep):
            self.folder.remove(f"{SHARDS_DIR}/{shard}.json")

    def _index_files(self) -> dict[str, str]:
        config, totals, folder = self.config, self.totals, self.folder
        kinds = {kind for kind, rows in (("sft", totals.sft_rows), ("dpo", totals.dpo_rows)) if rows}
        return {
            f"{llamafactory.FOLDER}/{llamafactory.DATASET_INFO_FILE}": dump_json(
                llamafactory.dataset_info(config.name_prefix, kinds)
            ),
            f"{llamafactory.FOLDER}/{llamafactory.README_FILE}": llamafactory.readme(
                folder.url_of(llamafactory.FOLDER),
                config.name_prefix,
                totals.sft_rows,
                totals.dpo_rows,
                totals.dpo_by_type,
                config.image_paths,
            ),
            f"{hf.FOLDER}/{hf.CARD_FILE}": hf.card(
                totals,
                license=config.license,
                pretty_name=config.pretty_name,
                text=config.hf_text,
                images=config.hf_images,
                run_info={
                    k: json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
                    for k, v in self.exporter.run_info.items()
                },
            ),
            f"{lacot.FOLDER}/{lacot.README_FILE}": lacot.readme(
                folder.url_of(lacot.FOLDER),
                config.lacot_image_root or folder.url_of(lacot.FOLDER),
                totals.sft_rows,
                config.lacot_keep_tags,
            ),
            f"{provenance.FOLDER}/{provenance.README_FILE}": provenance.readme(
                totals.sft_rows + totals.dpo_rows, totals.shards
            ),
        }

    def commit(self, cursor: Mapping[str, Any], keep: Collection[str] | None = None) -> CommitResult:
        """Bind the parts: index files from the totals, then the state. A rebuild first removes
        every shard not in `keep` (default: the shards it wrote). An incremental batch whose base
        another batch has committed over binds nothing (its totals would be off): the caller
        rebuilds, which counts from the parts themselves."""
        raw = self.folder.read(STATE_FILE)
        current = ExportState.model_validate_json(raw).generation if raw is not None else 0
        if not self.rebuild and current != self.last_generation:
            return CommitResult(state=None, written=self.written, dropped=self.dropped)
        if self.rebuild:
            keep = set(self.written) if keep is None else set(keep)
            self.dropped += sorted(set(self.known_shards()) - keep - set(self.dropped))
            self._sweep(keep)
        for path, text in self._index_files().items():
            self.folder.write(path, text)
        state = ExportState(
            layout=LAYOUT,
            fingerprint=self.exporter.fingerprint,
            generation=self.generation,
            cursor=dict(cursor),
            totals=self.totals,
        )
        self.folder.write(STATE_FILE, state.model_dump_json(indent=2))
        return CommitResult(state=state, written=self.written, dropped=self.dropped)
