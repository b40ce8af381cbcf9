"""gankd: compress GAN generators by knowledge distillation.

    from gankd import RunConfig, train, load_generator
    teacher_dir = train(RunConfig(out="runs/t", depth=32, loss="dcgan", steps=3000))
    student_dir = train(RunConfig(out="runs/s", method="mse", depth=4, teacher=f"{teacher_dir}/generator.safetensors"))
    student, meta = load_generator(f"{student_dir}/generator.safetensors")
"""

from gankd.checkpoint import load_generator
from gankd.config import RunConfig
from gankd.errors import GankdError
from gankd.models import Architecture, Critic, Generator, generator_parameters
from gankd.training import train

__all__ = ["Architecture", "Critic", "GankdError", "Generator", "RunConfig", "generator_parameters", "load_generator", "train"]
__version__ = "0.1.0"
