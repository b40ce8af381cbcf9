import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gankd.checkpoint import load_generator, prefixed, read_checkpoint, save_checkpoint
from gankd.errors import GankdError
from gankd.models import Architecture, Generator, count_parameters


def make_checkpoint(path: Path, arch: Architecture) -> Generator:
    generator = Generator(arch)
    save_checkpoint(path, prefixed("generator", generator.state_dict()), {"arch": arch.to_dict(), "step": 3})
    return generator


def test_roundtrip_gives_identical_images(tmp_path: Path) -> None:
    arch = Architecture(depth=4, image_size=32, channels=1)
    original = make_checkpoint(tmp_path / "g.safetensors", arch).eval()
    loaded, meta = load_generator(tmp_path / "g.safetensors")
    z = torch.randn(4, 100)
    assert torch.equal(original(z), loaded(z))
    assert meta["step"] == 3 and meta["arch"] == arch.to_dict() and meta["parameters"] == count_parameters(original)
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]  # no temporary file left behind


class Exploit:
    """A pickle payload that creates a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, writer: str) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"generator": Exploit(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Exploit(marker)))
    for load in (read_checkpoint, load_generator):
        with pytest.raises(GankdError, match="refuses to unpickle"):
            load(path)
    assert not marker.exists()


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    generator = Generator(Architecture(depth=4, image_size=32))
    save_checkpoint(path, prefixed("generator", generator.state_dict()), {"arch": Architecture(depth=8, image_size=32).to_dict()})
    with pytest.raises(GankdError, match="has shape"):
        load_generator(path)


@pytest.mark.parametrize("meta, message", [
    ({"arch": {"depth": 4, "image_size": 32, "channels": 1, "latent_dim": 100, "width": 3}}, "unknown architecture keys"),
    ({"arch": {"depth": -1, "image_size": 32, "channels": 1, "latent_dim": 100}}, "depth"),
    ({"step": 1}, "no architecture"),
])
def test_bad_metadata(tmp_path: Path, meta: dict, message: str) -> None:
    path = tmp_path / "g.safetensors"
    save_checkpoint(path, prefixed("generator", Generator(Architecture(4, 32)).state_dict()), meta)
    with pytest.raises(GankdError, match=message):
        load_generator(path)


def test_foreign_and_corrupt_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(GankdError, match="not a gankd checkpoint"):
        read_checkpoint(plain)
    truncated = tmp_path / "cut.safetensors"
    make_checkpoint(truncated, Architecture(4, 32))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(GankdError, match="not a readable safetensors"):
        read_checkpoint(truncated)
    with pytest.raises(GankdError, match="no such"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_metadata_is_json_in_the_header(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    make_checkpoint(path, Architecture(4, 32))
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["gankd"])["arch"]["depth"] == 4


def test_torchscript_teacher_shape_is_read_by_running_it(tmp_path: Path) -> None:
    generator = Generator(Architecture(depth=4, image_size=64, channels=3, latent_dim=32)).eval()
    path = tmp_path / "teacher.pt"
    torch.jit.script(generator).save(str(path))
    loaded, meta = load_generator(path, latent_dim=32)
    assert meta["arch"] == {"depth": None, "image_size": 64, "channels": 3, "latent_dim": 32}
    z = torch.randn(2, 32)
    assert torch.allclose(loaded(z), generator(z))
    with pytest.raises(GankdError, match="TorchScript"):
        read_checkpoint(path)
