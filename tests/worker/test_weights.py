"""worker.weights reads safetensors files into device memory; worker.experts builds the experts from them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from worker import experts, weights


@pytest.fixture
def mixed_file(tmp_path):
    """Every dtype a checkpoint holds, a scalar, an empty tensor and tensors larger than a chunk."""
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "blocks.0.ffn.weight": torch.randn(37, 29, generator=generator).to(torch.bfloat16),
        "blocks.0.norm1.weight": torch.randn(101, generator=generator),
        "half": torch.randn(3, 5, generator=generator).to(torch.float16),
        "double": torch.randn(4, generator=generator, dtype=torch.float64),
        "steps": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scale": torch.tensor(0.5),
        "empty": torch.zeros(0, 4),
        "fp8": torch.randn(6, 8, generator=generator).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    return path, tensors


def test_stored_tensors_match_what_safetensors_reads(mixed_file):
    path, tensors = mixed_file
    stored = weights.stored_tensors(path)
    assert {t.name for t in stored} == set(tensors)
    assert [t.start for t in stored] == sorted(t.start for t in stored)  # file order
    with safe_open(path, framework="pt") as file:
        for tensor in stored:
            assert tensor.dtype == tensors[tensor.name].dtype
            assert list(tensor.shape) == file.get_slice(tensor.name).get_shape()
            assert tensor.nbytes == tensors[tensor.name].numel() * tensors[tensor.name].element_size()


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])  # many chunks per tensor, a few, one
def test_read_to_device_returns_every_tensor_bit_for_bit(mixed_file, chunk_bytes):
    path, tensors = mixed_file
    loaded = weights.read_to_device([path], "cpu", lambda stored: stored.dtype, chunk_bytes=chunk_bytes)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name].view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8)), name


def test_read_to_device_casts_as_dtype_for_says_and_reads_files_in_parallel(tmp_path):
    paths, expected = [], {}
    for shard in range(5):
        tensors = {f"s{shard}.w": torch.randn(17, 3), f"s{shard}.n": torch.arange(4, dtype=torch.int32)}
        save_file(tensors, tmp_path / f"shard{shard}.safetensors")
        paths.append(tmp_path / f"shard{shard}.safetensors")
        expected.update(tensors)

    def to_bf16(stored):
        return torch.bfloat16 if stored.dtype.is_floating_point else stored.dtype

    loaded = weights.read_to_device(paths, "cpu", to_bf16, readers=3, chunk_bytes=16)
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        wanted = torch.bfloat16 if tensor.dtype.is_floating_point else tensor.dtype
        assert torch.equal(loaded[name], tensor.to(wanted)), name
    assert loaded["s0.w"].dtype == torch.bfloat16 and loaded["s0.n"].dtype == torch.int32


def test_a_truncated_file_is_an_error_naming_the_tensor(mixed_file, tmp_path):
    path, _ = mixed_file
    data = path.read_bytes()
    last = weights.stored_tensors(path)[-1]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: last.start + last.nbytes // 2])
    with pytest.raises(OSError, match=f"ends inside tensor {last.name}"):
        weights.read_to_device([cut], "cpu", lambda stored: stored.dtype, chunk_bytes=4)


def test_an_unknown_dtype_is_an_error(tmp_path):
    header = json.dumps({"odd": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(ValueError, match="odd has dtype C64"):
        weights.stored_tensors(path)


def test_load_expert_gives_what_diffusers_from_pretrained_gives(tiny_model_dir, monkeypatch):
    """Same parameters bit for bit, same dtypes (bf16; fp32 for the modules the model keeps in fp32),
    same RoPE buffers, eval mode, and the same forward output."""
    from diffusers import WanTransformer3DModel

    monkeypatch.setattr(weights, "CHUNK_BYTES", 1000)  # several chunks per tensor
    expert = experts.load_expert(tiny_model_dir, "transformer", "cpu")
    reference = WanTransformer3DModel.from_pretrained(
        tiny_model_dir, subfolder="transformer", torch_dtype=torch.bfloat16, device_map={"": "cpu"}
    )
    ours, theirs = dict(expert.named_parameters()), dict(reference.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, param in theirs.items():
        assert ours[name].dtype == param.dtype and torch.equal(ours[name], param), name
    assert {p.dtype for p in ours.values()} == {torch.bfloat16, torch.float32}
    assert ours["scale_shift_table"].dtype == torch.float32
    for name, buffer in reference.named_buffers():
        assert torch.equal(dict(expert.named_buffers())[name], buffer), name
    assert not expert.training
    assert dict(expert.config) == dict(reference.config)

    generator, config = torch.Generator().manual_seed(0), expert.config
    inputs = dict(
        hidden_states=torch.randn(1, config.in_channels, 2, 4, 4, generator=generator).to(torch.bfloat16),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 3, config.text_dim, generator=generator).to(torch.bfloat16),
        return_dict=False,
    )
    with torch.no_grad():
        assert torch.equal(expert(**inputs)[0], reference(**inputs)[0])


def test_a_missing_tensor_fails_the_load(tiny_model_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (shard,) = experts.expert_files(model_dir, "transformer")
    with safe_open(shard, framework="pt") as file:
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 - not a mapping
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, shard)
    with pytest.raises(RuntimeError, match=dropped):
        experts.load_expert(model_dir, "transformer", "cpu")


def test_expert_files_are_the_shards_the_index_names(tmp_path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    for name in ("a-00001-of-00002.safetensors", "a-00002-of-00002.safetensors", "stray.safetensors"):
        (folder / name).write_bytes(b"")
    index = {"weight_map": {"x": "a-00002-of-00002.safetensors", "y": "a-00001-of-00002.safetensors"}}
    (folder / "a.safetensors.index.json").write_text(json.dumps(index))
    assert [p.name for p in experts.expert_files(tmp_path, "transformer")] == [
        "a-00001-of-00002.safetensors",
        "a-00002-of-00002.safetensors",
    ]
    (folder / "a.safetensors.index.json").unlink()
    assert len(experts.expert_files(tmp_path, "transformer")) == 3
