"""The activation store: manifest, atomic shards, resume, refusal to mix, shuffled streaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from decompbench.errors import UserError
from decompbench.real.sites import RealSite, open_site
from decompbench.real.store import MANIFEST, ActivationStore, build_store, texts_sha256
from tests.test_real_sites import TEXTS, tiny_gpt2

pytest.importorskip("transformers")

SEQ, SHARD = 16, 4  # 4 sequences of 16 tokens = 64 rows per shard
TEXTS_SMALL = TEXTS[:40]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> RealSite:
    return open_site(str(tiny_gpt2(tmp_path_factory)), "transformer.h.1")


def build(site: RealSite, root: Path, texts: list[str] = TEXTS_SMALL, **kw: object) -> dict:
    ds = {"path": None, "sha256": texts_sha256(texts)}
    return build_store(root, site, texts, ds, SEQ, SHARD, **kw)  # type: ignore[arg-type]


def test_manifest_records_the_model_hook_data_dtype_and_shards(
    site: RealSite, tmp_path: Path
) -> None:
    man = build(site, tmp_path / "s", max_seqs=10)
    on_disk = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert on_disk == man
    assert man["hook"] == "transformer.h.1" and man["model"] == site.model_name
    assert man["dataset"]["sha256"] == texts_sha256(TEXTS_SMALL) and man["dtype"] == "float32"
    assert [s["seqs"] for s in man["shards"]] == [4, 4, 2]  # 10 sequences, 4 per shard
    assert [s["rows"] for s in man["shards"]] == [64, 64, 32]
    assert man["complete"] and man["d"] == 32
    assert not list((tmp_path / "s").glob("*.tmp"))
    store = ActivationStore(tmp_path / "s")
    acts, tokens = store.load_shard(1)
    assert torch.equal(acts, site.acts(tokens))  # rows s*T + t of the shard's own windows


def test_an_interrupted_build_resumes_with_only_the_missing_shards(
    site: RealSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = build(site, tmp_path / "full", max_seqs=12)
    root = tmp_path / "half"
    build(site, root, max_seqs=12)
    man = json.loads((root / MANIFEST).read_text())
    # as if killed after writing shard 1's temp file but before the manifest named it
    man["shards"], man["complete"] = man["shards"][:1], False
    (root / MANIFEST).write_text(json.dumps(man))
    (root / "shard-00001.safetensors").rename(root / "shard-00001.safetensors.tmp")
    (root / "shard-00002.safetensors").unlink()
    with pytest.raises(UserError, match="unfinished"):
        ActivationStore(root)
    calls: list[int] = []
    real_acts = RealSite.acts
    monkeypatch.setattr(RealSite, "acts", lambda self, t: calls.append(1) or real_acts(self, t))
    resumed = build(site, root, max_seqs=12)
    assert len(calls) == 2  # shards 1 and 2 only
    assert resumed == full
    for i in range(3):
        a, b = ActivationStore(root).load_shard(i), ActivationStore(tmp_path / "full").load_shard(i)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_store_for_other_data_is_refused(site: RealSite, tmp_path: Path) -> None:
    build(site, tmp_path / "s", max_seqs=4)
    with pytest.raises(UserError, match="another dataset"):
        build(site, tmp_path / "s", texts=TEXTS_SMALL[1:], max_seqs=4)


def test_batches_visit_every_row_once_per_epoch_shuffled_within_a_bounded_buffer(
    site: RealSite, tmp_path: Path
) -> None:
    build(site, tmp_path / "s", max_seqs=16)  # 4 shards x 64 rows
    store = ActivationStore(tmp_path / "s")
    all_rows = torch.cat([a for a, _ in store.shards()])
    stream = store.batches(batch_size=32, seed=0, buffer_shards=2)
    epoch = torch.cat([next(stream) for _ in range(256 // 32)])
    key = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert key(epoch) == key(all_rows)  # a permutation of the rows
    assert not torch.equal(epoch, all_rows)
    assert store.peak_rows <= 2 * 64 + 32  # two shards plus a batch of leftovers
    again = torch.cat([next(store.batches(32, seed=0)) for _ in range(1)])
    assert torch.equal(again, epoch[:32])  # same seed, same stream
    with pytest.raises(UserError, match="exceeds"):
        next(store.batches(batch_size=1000, seed=0))


def test_selecting_shards_splits_train_and_held_out(site: RealSite, tmp_path: Path) -> None:
    build(site, tmp_path / "s", max_seqs=12)
    store = ActivationStore(tmp_path / "s")
    train, held = store.select([0, 1]), store.select([2])
    assert (train.n_rows, held.n_rows) == (128, 64)
    assert torch.equal(held.load_shard(0)[0], store.load_shard(2)[0])
    assert store.head(100).shape == (100, 32)
