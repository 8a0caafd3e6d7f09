"""The ``mslam-splatfacto`` method for ``ns-train`` (registered through the ``nerfstudio.method_configs``
entry point in pyproject.toml).

    ns-train mslam-splatfacto --data RUN_EXPORT                            # GPU: gsplat's rasteriser
    ns-train mslam-splatfacto --data RUN_EXPORT --machine.device-type cpu  # CPU: mslam_ns's rasteriser

The dataparser defaults to ``mslam-data`` (mslam_ns's own) when it is installed, else nerfstudio's
``nerfstudio-data`` with ``load_3D_points=True`` (a folder with transforms.json and ``ply_file_path``);
either can be chosen on the command line (``... nerfstudio-data --data DIR``). The viewer quits when training
ends (``--viewer.quit-on-train-completion False`` keeps it), so scripted and CPU runs terminate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from mslam_ns.nerfstudio.model import MslamSplatfactoModelConfig


class MslamDatamanager(FullImageDatamanager[InputDataset]):
    """Full-image datamanager that never pins memory without a CUDA driver, and that samples only the
    training images the SLAM has posed (live mode, `set_train_ready`).

    nerfstudio switches ``cache_images`` to "cpu" above 500 images and then calls ``pin_memory()``, which
    fails on a machine without a driver; there the images are cached on the (CPU) device instead.
    """

    train_ready: list[bool] | None = None
    """Which training images may be sampled (live mode: those the SLAM has posed); None = all."""

    def _load_images(self, split: Literal["train", "eval"], cache_images_device: Literal["cpu", "gpu"]) -> Any:
        if cache_images_device == "cpu" and not torch.cuda.is_available():
            cache_images_device = "gpu"  # "gpu" caches on the datamanager's device, which is the CPU here
        return super()._load_images(split, cache_images_device=cache_images_device)

    def _dataset(self, outputs: Any) -> InputDataset:
        """nerfstudio's DepthDataset when the dataset has depth maps (`ns-process-data mslam --depth`), for
        the model's depth supervision; else the plain image dataset (never nerfstudio's monocular depth
        estimation, which downloads a network)."""
        if (outputs.metadata or {}).get("depth_filenames"):
            from nerfstudio.data.datasets.depth_dataset import DepthDataset

            return DepthDataset(outputs, scale_factor=self.config.camera_res_scale_factor)
        return InputDataset(outputs, scale_factor=self.config.camera_res_scale_factor)

    def create_train_dataset(self) -> InputDataset:
        return self._dataset(self.train_dataparser_outputs)

    def create_eval_dataset(self) -> InputDataset:
        return self._dataset(self.dataparser.get_dataparser_outputs(split=self.test_split))

    def set_train_ready(self, ready: list[bool]) -> None:
        """Sample only the training images marked ready (from now on; newly ready ones join at the next
        pass over the training set)."""
        if len(ready) != len(self.train_dataset):
            raise ValueError(f"{len(ready)} ready flags for {len(self.train_dataset)} training images")
        self.train_ready = [bool(r) for r in ready]
        if not any(self.train_ready):
            raise ValueError("no training image is ready")
        self.train_unseen_cameras = [i for i in self.train_unseen_cameras if self.train_ready[i]]
        if not self.train_unseen_cameras:
            self.train_unseen_cameras = self.sample_train_cameras()

    def sample_train_cameras(self) -> list[int]:
        order = super().sample_train_cameras()
        ready = self.train_ready
        return order if ready is None else [i for i in order if ready[i]]


@dataclass
class MslamDatamanagerConfig(FullImageDatamanagerConfig):
    """Full-image datamanager config (see `MslamDatamanager`)."""

    _target: type = field(default_factory=lambda: MslamDatamanager)


class FloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """nerfstudio's exponential decay, with Python-float learning rates.

    nerfstudio's schedule computes with numpy, so numpy scalars land in the optimiser and scheduler state;
    torch >= 2.6 loads checkpoints with ``weights_only=True`` and then refuses them (``ns-eval`` and
    ``--load-dir`` fail). Casting to float keeps checkpoints loadable.
    """

    def get_scheduler(self, optimizer: Any, lr_init: float) -> Any:
        sched = super().get_scheduler(optimizer, lr_init)
        sched.lr_lambdas = [lambda step, f=f: float(f(step)) for f in sched.lr_lambdas]
        for group in optimizer.param_groups:
            group["lr"] = float(group["lr"])
        sched._last_lr = [float(x) for x in sched._last_lr]
        return sched


@dataclass
class FloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """Exponential decay config whose scheduler keeps learning rates as Python floats."""

    _target: type = field(default_factory=lambda: FloatExponentialDecayScheduler)


def default_dataparser() -> Any:
    """mslam_ns's ``mslam-data`` dataparser config when available, else nerfstudio-data with 3D points."""
    try:
        from mslam_ns.nerfstudio.dataparser import MslamDataParserConfig
    except ImportError:
        from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

        return NerfstudioDataParserConfig(load_3D_points=True)
    return MslamDataParserConfig()


def _optimizers(max_steps: int) -> dict[str, Any]:
    """splatfacto's optimiser settings."""
    none = {"scheduler": None}
    return {
        "means": {
            "optimizer": AdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps),
        },
        "features_dc": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), **none},
        "features_rest": {"optimizer": AdamOptimizerConfig(lr=0.0025 / 20, eps=1e-15), **none},
        "opacities": {"optimizer": AdamOptimizerConfig(lr=0.05, eps=1e-15), **none},
        "scales": {"optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15), **none},
        "quats": {"optimizer": AdamOptimizerConfig(lr=0.001, eps=1e-15), **none},
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(
                lr_final=5e-7, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
        "bilateral_grid": {
            "optimizer": AdamOptimizerConfig(lr=2e-3, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(
                lr_final=1e-4, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
    }


def make_trainer_config(max_steps: int = 30000) -> TrainerConfig:
    """The mslam-splatfacto trainer config (splatfacto's schedule with SLAM seeding and a CPU path)."""
    return TrainerConfig(
        method_name="mslam-splatfacto",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=max_steps,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=MslamDatamanagerConfig(dataparser=default_dataparser(), cache_images_type="uint8"),
            model=MslamSplatfactoModelConfig(),
        ),
        optimizers=_optimizers(max_steps),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, quit_on_train_completion=True),
        vis="viewer",
    )


mslam_splatfacto = MethodSpecification(
    config=make_trainer_config(),
    description="Gaussian splatting seeded from mslam_ns's dense SLAM points (GPU: gsplat; CPU: mslam_ns rasteriser)",
)
