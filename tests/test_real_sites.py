"""Real sites on a tiny GPT-2 built in the test: hook names, row layout, capture, splicing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from decompbench.errors import UserError
from decompbench.real.sites import (
    HookSpec,
    RealSite,
    flatten_rows,
    open_site,
    token_windows,
    unflatten_rows,
)

pytest.importorskip("transformers")

TEXTS = [f"the quick brown fox jumps over the lazy dog {i} times." for i in range(300)]
_BUILT: dict[str, Path] = {}


def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide GPT-2 with a character tokenizer, briefly trained, built once."""
    from decompbench.real.tiny import make_tiny_gpt2

    if "path" not in _BUILT:
        torch.set_num_threads(1)
        path = tmp_path_factory.mktemp("tiny-gpt2")
        _BUILT["path"] = make_tiny_gpt2(path, seed=0, texts=TEXTS, train_steps=60)
    return _BUILT["path"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> RealSite:
    return open_site(str(tiny_gpt2(tmp_path_factory)), "transformer.h.0")


def windows(site: RealSite, n_seqs: int = 4, seq_len: int = 16) -> torch.Tensor:
    return next(token_windows(site.tokenizer, TEXTS, seq_len, n_seqs))


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("transformer.h.1", HookSpec("transformer.h.1", "output")),
        ("transformer.h.1:output", HookSpec("transformer.h.1", "output")),
        ("transformer.h.1.mlp:input", HookSpec("transformer.h.1.mlp", "input")),
    ],
)
def test_hook_specs_parse(text: str, spec: HookSpec) -> None:
    assert HookSpec.parse(text) == spec


def test_unknown_hook_is_a_one_line_error_with_close_matches(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with pytest.raises(UserError, match=r"no module 'transformer\.h\.7'.*transformer\.h\.") as e:
        open_site(str(tiny_gpt2(tmp_path_factory)), "transformer.h.7")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="'input' or 'output'"):
        HookSpec.parse("transformer.h.0:middle")


def test_missing_model_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load model"):
        open_site(str(tmp_path / "empty"), "transformer.h.0")


def test_token_windows_join_texts_with_eos_and_cut_whole_windows(site: RealSite) -> None:
    # "ab" -> [a, b, eos], "cde" -> [c, d, e, eos]: 7 ids -> two windows of 3, one id dropped
    batches = list(token_windows(site.tokenizer, ["ab", "cde"], seq_len=3, batch_seqs=1))
    ids = [b.tolist()[0] for b in batches]
    enc = {c: site.tokenizer(c)["input_ids"][0] for c in "abcde"}
    eos = site.tokenizer.eos_token_id
    assert ids == [[enc["a"], enc["b"], eos], [enc["c"], enc["d"], enc["e"]]]


def test_rows_are_sequence_major() -> None:
    x_STD = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    rows = flatten_rows(x_STD)
    assert torch.equal(rows[1 * 3 + 2], x_STD[1, 2])  # row s*T + t
    assert torch.equal(unflatten_rows(rows, 3), x_STD)
    with pytest.raises(UserError, match="whole sequences"):
        unflatten_rows(rows[:5], 3)


def test_acts_are_the_block_output_and_the_input_port_is_the_mlp_input(site: RealSite) -> None:
    toks = windows(site)
    acts = site.acts(toks)
    assert acts.shape == (4 * 16, 32)
    with torch.no_grad():
        out = site.model(input_ids=toks, output_hidden_states=True)
    # hidden_states[1] is the residual stream after block 0
    assert torch.allclose(acts, flatten_rows(out.hidden_states[1]), atol=1e-6)
    mlp_in = RealSite("m", site.model, site.tokenizer, HookSpec("transformer.h.0.mlp", "input"))
    ln2 = RealSite("m", site.model, site.tokenizer, HookSpec("transformer.h.0.ln_2"))
    assert torch.equal(mlp_in.acts(toks), ln2.acts(toks))


def test_splicing_the_clean_values_changes_nothing_and_zeros_change_the_output(
    site: RealSite,
) -> None:
    toks = windows(site)
    clean = site.logits(toks)
    same = site.logits(toks, lambda v: v.clone())
    zero = site.logits(toks, torch.zeros_like)
    assert torch.equal(clean, same)
    assert (clean - zero).abs().max() > 1.0


def test_downstream_site_maps_whole_sequences_to_logits(site: RealSite) -> None:
    toks = windows(site, n_seqs=3)
    view = site.downstream_site(toks)
    assert view.output_kind == "categorical"
    out = view.output(view.acts_ND)
    assert out.shape == (3 * 16, len(site.tokenizer))
    assert torch.allclose(out, flatten_rows(site.logits(toks)), atol=1e-5)
    with pytest.raises(UserError, match="whole sequences: 48 rows"):
        view.output(view.acts_ND[:16])
    # gradients reach the spliced activations
    g = view.output_grads(view.acts_ND, torch.ones_like(out))
    assert g.shape == view.acts_ND.shape and g.abs().sum() > 0
