import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
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


# ------------------------------------------------------------------ crafted files: one line, nothing built

GOOD_ARCH = Architecture(depth=4, image_size=32)


def write_raw(path: Path, meta_text: str, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A safetensors file with gankd metadata written verbatim (as a hostile user could)."""
    tensors = tensors if tensors is not None else prefixed("generator", Generator(GOOD_ARCH).state_dict())
    path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"gankd": meta_text}))
    return path


def meta_json(**overrides) -> str:
    return json.dumps({"format": "gankd-checkpoint", "version": 1, "arch": GOOD_ARCH.to_dict(), "step": 1, **overrides})


def with_tensor(name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    tensors = prefixed("generator", Generator(GOOD_ARCH).state_dict())
    tensors[name] = value
    return tensors


ARCH_100 = '{"depth": 4, "image_size": 32, "channels": 1, "latent_dim": 100'
CRAFTED = {
    "nested-200000-deep": ('{"format": "gankd-checkpoint", "version": 1, "x": ' + "[" * 200_000 + "]" * 200_000 + "}", None, "nested too deeply"),
    "nested-40-deep": (meta_json(x=json.loads("[" * 40 + "]" * 40)), None, "nested over 32 levels"),
    "depth-1e400": (meta_json()[:-1] + ', "arch": {"depth": 1e400, "image_size": 32, "channels": 1, "latent_dim": 100}}', None, "depth must be an integer"),
    "depth-ten-million": (meta_json(arch={"depth": 10_000_000, "image_size": 32, "channels": 1, "latent_dim": 100}), None, "depth must be in 1..512"),
    "latent-huge": (meta_json(arch={"depth": 4, "image_size": 32, "channels": 1, "latent_dim": 10**9}), None, "latent size must be in 1..1024"),
    "depth-string": (meta_json(arch={"depth": "4", "image_size": 32}), None, "depth must be an integer"),
    "depth-bool": (meta_json(arch={"depth": True, "image_size": 32}), None, "depth must be an integer"),
    "arch-list": (meta_json(arch=[4, 32]), None, "wrong type"),
    "step-string": (meta_json(step="x"), None, "'step' has the wrong type"),
    "step-negative": (meta_json(step=-3), None, "'step' is out of range"),
    "teacher-parameters-string": (meta_json(teacher={"path": "t", "parameters": "many"}), None, "'teacher.parameters'"),
    "float16": (meta_json(), {k: v.half() for k, v in prefixed("generator", Generator(GOOD_ARCH).state_dict()).items()}, "is torch.float16"),
    "int32": (meta_json(), with_tensor("generator.net.0.weight", torch.zeros(100, 16, 4, 4, dtype=torch.int32)), "'generator.net.0.weight' is torch.int32"),
    "bool": (meta_json(), with_tensor("generator.net.0.weight", torch.zeros(100, 16, 4, 4, dtype=torch.bool)), "is torch.bool"),
    "nan-weights": (meta_json(), with_tensor("generator.net.3.weight", torch.full((16, 8, 4, 4), float("nan"))), "'generator.net.3.weight' holds NaN"),
    "inf-statistics": (meta_json(), with_tensor("generator.net.1.running_var", torch.full((16,), float("inf"))), "'generator.net.1.running_var' holds NaN or inf"),
}


def spy_on_generators(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The device type every Generator that gankd.checkpoint builds is created on, in order."""
    import gankd.checkpoint as ckpt

    built_on: list[str] = []

    class Spy(Generator):
        def __init__(self, arch):
            built_on.append(torch.get_default_device().type)
            super().__init__(arch)

    monkeypatch.setattr(ckpt, "Generator", Spy)
    return built_on


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_checkpoints_end_with_one_line_and_build_nothing(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every crafted file gives a GankdError naming it, before any network is built for real: the
    only Generator ever constructed lives on the meta device (no memory)."""
    meta_text, tensors, message = CRAFTED[name]
    path = write_raw(tmp_path / f"{name}.safetensors", meta_text, tensors)
    built_on = spy_on_generators(monkeypatch)
    with pytest.raises(GankdError, match=message) as err:
        load_generator(path)
    assert str(path) in str(err.value)
    assert set(built_on) <= {"meta"}


def test_a_huge_architecture_with_small_tensors_is_refused_before_it_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the limits (d=512, 128x128, latent 1024: 0.85 G parameters) but not matching the
    file's tensors: refused from the meta-device check, never allocated."""
    path = write_raw(tmp_path / "big.safetensors", meta_json(arch={"depth": 512, "image_size": 128, "channels": 1, "latent_dim": 1024}))
    built_on = spy_on_generators(monkeypatch)
    with pytest.raises(GankdError, match="do not match the architecture"):
        load_generator(path)
    assert built_on == ["meta"]


def test_unknown_architecture_keys_name_the_file(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "wide.safetensors", meta_json(arch={**GOOD_ARCH.to_dict(), "width": 3}))
    with pytest.raises(GankdError, match=r"wide.safetensors: .*unknown architecture keys \['width'\]"):
        load_generator(path)


def test_header_size_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "big-header.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(GankdError, match="over gankd's limit"):
        read_checkpoint(path)


def test_truncated_safetensors_starting_with_P_is_not_called_a_pickle(tmp_path: Path) -> None:
    """The first byte of a safetensors file is the low byte of its header length; 0x50 is 'P'."""
    for pad in range(300):
        payload = st_save(prefixed("generator", Generator(GOOD_ARCH).state_dict()), metadata={"gankd": meta_json(pad="x" * pad)})
        if payload[:1] == b"P":
            break
    path = tmp_path / "cut.safetensors"
    path.write_bytes(payload[:40])
    with pytest.raises(GankdError, match="truncated") as err:
        read_checkpoint(path)
    assert "pickle" not in str(err.value)


def test_torchscript_generator_with_nan_weights_is_refused(tmp_path: Path) -> None:
    generator = Generator(GOOD_ARCH).eval()
    with torch.no_grad():
        generator.net[0].weight.fill_(float("nan"))
    path = tmp_path / "nan.pt"
    torch.jit.script(generator).save(str(path))
    with pytest.raises(GankdError, match="NaN or infinite images"):
        load_generator(path)


def test_a_finished_gan_run_leaves_its_critic_which_loads_and_refuses_another_image_shape(tmp_path: Path) -> None:
    from gankd.checkpoint import load_critic
    from gankd.config import RunConfig
    from gankd.training import train

    run = train(RunConfig(out=str(tmp_path / "gan"), depth=4, critic_depth=4, loss="dcgan", steps=3, log_every=3, batch_size=8))
    critic, meta = load_critic(run / "critic.safetensors", image_size=32, channels=1)
    tensors, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    for name, tensor in critic.state_dict().items():
        assert torch.equal(tensor, tensors[f"critic.{name}"]), name
    assert meta["critic_arch"]["depth"] == 4 and meta["loss"] == "dcgan"
    with pytest.raises(GankdError, match=r"judges 1x32x32 images, the student makes 3x64x64") as err:
        load_critic(run / "critic.safetensors", image_size=64, channels=3)
    assert "\n" not in str(err.value)
    with pytest.raises(GankdError, match="a run's critic, not a generator"):
        load_generator(run / "critic.safetensors")
    with pytest.raises(GankdError, match="not a critic file"):
        load_critic(run / "generator.safetensors")
