"""The GPU benchmarks' arithmetic and plumbing, checked on CPU with tiny models (the GPU numbers are in
BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import common, dit
from benchmarks.official import sdpa_flash_attention


def test_dit_flops_match_the_issue_formula_at_720p():
    seq = common.tokens("720p")
    assert seq == 75_600
    d, ffn = 5120, 13824
    per_layer = 8 * seq * d**2 + 4 * seq**2 * d + 4 * seq * d**2 + 4 * seq * 512 * d + 4 * seq * d * ffn
    assert common.dit_flops(seq) == pytest.approx(40 * per_layer)
    assert common.dit_flops(seq) == pytest.approx(6.521e15, rel=1e-3)  # one forward; x2 for the CFG pair


def test_merge_results_keeps_keys_written_by_other_parts(tmp_path):
    path = tmp_path / "results.json"
    common.merge_results({"card": "A", "e2e_480p_40_steps_s": 200.0}, path)
    merged = common.merge_results({"card": "B", "matmul_tflops": 790.0}, path)
    assert merged == {"card": "B", "e2e_480p_40_steps_s": 200.0, "matmul_tflops": 790.0}
    assert json.loads(path.read_text()) == merged


def test_merge_results_rejects_a_file_that_is_not_an_object(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        common.merge_results({"card": "A"}, path)


def test_sdpa_route_computes_the_official_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8) for _ in range(3))  # [B, L, N, C] as the official code passes them
    out = sdpa_flash_attention(q, k, v, k_lens=torch.tensor([7, 7]), dtype=torch.bfloat16)
    qb, kb, vb = (x.to(torch.bfloat16).float() for x in (q, k, v))
    scores = torch.einsum("blnc,bmnc->bnlm", qb, kb) / 8**0.5
    ref = torch.einsum("bnlm,bmnc->blnc", scores.softmax(-1), vb)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert torch.allclose(out, ref, atol=2e-2)


def test_sdpa_route_refuses_padded_keys():
    q = k = v = torch.randn(1, 4, 2, 8)
    with pytest.raises(NotImplementedError, match="mask"):
        sdpa_flash_attention(q, k, v, k_lens=torch.tensor([3]))


def test_materialize_keeps_fp32_modules_and_real_rope_buffers():
    from diffusers import WanTransformer3DModel

    model = dit.build_ours("cpu", tiny=True)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["blocks.0.scale_shift_table"] == torch.float32  # _keep_in_fp32_modules
    assert all(p.abs().sum() > 0 for p in model.parameters())  # never zeros
    fresh = WanTransformer3DModel(**dit.a14b_config(tiny=True))
    assert torch.equal(model.rope.freqs_cos, fresh.rope.freqs_cos)  # buffers built for real, not empty


def test_tiny_dit_run_writes_its_keys_and_keeps_others(tmp_path, monkeypatch):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"e2e_720p_40_steps_s": 850.0}))
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    args = ["--tiny", "--device", "cpu", "--sizes", "480p", "--no-compile", "--no-official"]
    assert dit.main([*args, "--backends", "native"]) == 0
    merged = json.loads(results.read_text())
    assert merged["e2e_720p_40_steps_s"] == 850.0
    assert merged["dit_480p_cfg_step_s"] > 0 and merged["matmul_tflops"] > 0
    record = json.loads((tmp_path / "dit.json").read_text())
    assert record["ours_480p_b1"]["repeat"]["max_abs_diff"] == 0.0  # the same call twice is bit-identical
    assert record["backends_480p"]["native"]["max_abs_diff"] == 0.0


def test_unknown_size_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        dit.main(["--tiny", "--sizes", "1080p"])
    assert "unknown size '1080p'" in capsys.readouterr().err


def test_presets_speedup_is_the_lossless_step_over_the_best_fp8_step():
    from benchmarks.presets import summarize

    near = {"max_abs_diff": 0.1, "rel_l2": 0.01, "finite": True}
    rec = {
        "lossless": {"median_s": 21.0},
        "fp8": {"median_s": 17.5, "vs_lossless": near},
        "fp8_sage": {"median_s": 14.0, "vs_lossless": near},
    }
    keys = summarize(rec)
    assert keys["fp8_speedup_720p"] == 1.5 and keys["fp8_speedup_720p_variant"] == "fp8_sage"
    assert keys["fp8_speedup_720p_linear_only"] == 1.2
    assert "fp8_speedup_720p" not in summarize({"lossless": {"median_s": 21.0}})
    # The compile-friendly candidate's records compete for the best, under their own names.
    rec["fp8_mm"] = {"median_s": 15.0, "vs_lossless": near}
    rec["fp8_mm_sage"] = {"median_s": 12.0, "vs_lossless": near}
    keys = summarize(rec)
    assert keys["fp8_speedup_720p"] == 1.75 and keys["fp8_speedup_720p_variant"] == "fp8_mm_sage"
    assert keys["fp8_speedup_720p_linear_only_scaled_mm"] == 1.4
    assert keys["presets_720p_fp8_mm_step_s"] == 15.0


@pytest.mark.parametrize("impl, name", [("scaled_mm", "fp8_mm"), ("scaled_mm_fast", "fp8_mm_fast")])
def test_tiny_presets_run_with_the_scaled_mm_candidate(tmp_path, monkeypatch, impl, name):
    from benchmarks import presets

    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results.json"))
    args = ["--tiny", "--device", "cpu", "--only", "lossless,fp8", "--fp8-impl", impl]
    assert presets.main(args) == 0
    record = json.loads((tmp_path / "presets.json").read_text())
    assert "fp8" not in record and record["fp8_layers"] > 0
    assert record[name]["vs_lossless"]["finite"] and 0 < record[name]["vs_lossless"]["rel_l2"] < 0.3
    assert json.loads((tmp_path / "results.json").read_text())[f"presets_720p_{name}_step_s"] > 0


def test_tiny_presets_run_saves_a_reference_the_second_process_compares_against(tmp_path, monkeypatch):
    from benchmarks import presets

    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results.json"))
    ref = tmp_path / "ref.pt"
    base = ["--tiny", "--device", "cpu"]
    assert presets.main([*base, "--only", "lossless", "--save-ref", str(ref)]) == 0
    saved = torch.load(ref)
    assert saved["lossless"]["median_s"] > 0 and saved["out"].shape[0] == 1
    assert presets.main([*base, "--only", "fp8_sage", "--ref", str(ref)]) == 0  # no Sage on this machine
    record = json.loads((tmp_path / "presets_sage.json").read_text())
    assert record["fp8_sage_skipped"].startswith("sageattention")
    assert json.loads((tmp_path / "results.json").read_text())["presets_720p_lossless_step_s"] > 0


def test_io_rates_times_the_workers_own_resume_save_and_leaves_no_state(tmp_path, monkeypatch):
    from benchmarks import io_rates

    results = tmp_path / "results.json"
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    monkeypatch.setattr(io_rates, "drop_page_cache", lambda path: "fadvise (test)")  # no host-wide drop
    folder = tmp_path / "io"
    assert io_rates.main(["--tiny", "--device", "cpu", "--dir", str(folder)]) == 0
    merged = json.loads(results.read_text())
    record = json.loads((tmp_path / "io_rates.json").read_text())
    runs = record["resume_save"]["runs"]
    assert len(runs) == 5 and all(run["write_s"] > 0 for run in runs)
    # four fp32 latent-sized tensors (latents, two model outputs, last sample) plus the header
    assert record["resume_save"]["bytes"] > 4 * 16 * 3 * 8 * 8 * 4
    assert merged["resume_save_s_720p"] > 0 and merged["resume_state_mb_720p"] > 0
    assert record["resume_save"]["shape"] == [1, 16, 3, 8, 8]
    assert not (folder / "resume").exists()  # the saved state is deleted afterwards, folders and all
