"""`MslamSplatfactoModel`: splatfacto seeded from the dense SLAM points, training on CUDA (gsplat) or CPU.

Differences from nerfstudio's splatfacto:

* Seeding (unless ``random_init``): means = the fused SLAM points, initial scales from local point spacing
  (mean distance to the k nearest points, clamped to a band around the median so stray points do not become
  huge splats), opacities from the per-point confidence when the dataparser provides ``points3D_confidence``
  (else ``init_opacity``), colours from the points' RGB; each splat remembers its keyframe
  (``points3D_keyframe``, -1 when unknown) in ``splat_keyframe``, kept aligned through densification (it
  lives in the strategy state, which gsplat's split/duplicate/prune ops carry along).
* Device: gsplat's CUDA rasteriser on a CUDA device, `mslam_ns.nerfstudio.raster.rasterize` elsewhere
  (``rasterizer`` picks); no ``.cuda()`` calls, no ``torch.compile``, no absgrad off CUDA, and on the CPU path
  gsplat's CUDA backend is fenced off (`forbid_gsplat_cuda`) so nothing can start its JIT build.
* LPIPS is built on first use; when its network weights cannot be obtained (offline), the metric is left
  out with one warning instead of failing at construction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
)
from torch import Tensor

from mslam_ns.geometry.conventions import flip_camera_axes

log = logging.getLogger(__name__)


@dataclass
class MslamSplatfactoModelConfig(SplatfactoModelConfig):
    """Splatfacto seeded from dense SLAM points; runs on CUDA (gsplat) and on CPU (mslam_ns rasteriser)."""

    _target: type = field(default_factory=lambda: MslamSplatfactoModel)
    rasterizer: Literal["auto", "gsplat", "torch"] = "auto"
    """auto: gsplat's CUDA rasteriser on a CUDA device, the PyTorch rasteriser otherwise; torch: always ours."""
    init_scale_knn: int = 3
    """Initial splat scale = mean distance to this many nearest seed points."""
    init_scale_clamp: tuple[float, float] = (0.2, 5.0)
    """Initial scales are clamped to this band times the median spacing (isolated points stay small)."""
    init_opacity: float = 0.5
    """Opacity of seeded splats when the points carry no confidence."""
    init_opacity_range: tuple[float, float] = (0.1, 0.9)
    """Confidence is mapped linearly (normalised by its 95th percentile) onto this opacity range."""
    depth_loss_mult: float = 0.0
    """Depth supervision from the fused SLAM pointmaps (a dataset with depth maps, `ns-process-data mslam
    --depth`): this times the mean L1 between the rendered expected depth and the SLAM depth, where it has one."""
    lpips_metric: bool = True
    """Report LPIPS at evaluation (its network is built on first use; left out with a warning if unavailable)."""


def local_spacing(points: Tensor, k: int, clamp: tuple[float, float]) -> Tensor:  # [N, 3] -> [N]
    """Mean distance to the k nearest other points, clamped to clamp * median."""
    from scipy.spatial import cKDTree  # scipy comes with nerfstudio (scikit-image); sklearn may not

    x = points.detach().cpu().double().numpy()
    k = max(1, min(k, len(x) - 1))
    dist, _ = cKDTree(x).query(x, k=k + 1)
    d = torch.from_numpy(dist.reshape(len(x), -1)[:, 1:].mean(1)).float()
    med = float(d.median()) if d.numel() else 1.0
    med = med if med > 0 else 1e-3
    return d.clamp(clamp[0] * med, clamp[1] * med)


def depth_l1(pred: Tensor, gt: Tensor) -> Tensor:  # [H, W, 1], [H', W', 1] -> scalar
    """Mean |pred - gt| over the pixels where gt has a depth (> 0), gt resized (nearest) to pred's size."""
    gt = gt.to(pred)
    if gt.shape[:2] != pred.shape[:2]:
        gt = torch.nn.functional.interpolate(gt.permute(2, 0, 1)[None], size=pred.shape[:2], mode="nearest")
        gt = gt[0].permute(1, 2, 0)
    m = gt > 0
    if not bool(m.any()):
        return pred.sum() * 0.0
    return (pred[m] - gt[m]).abs().mean()


def confidence_to_opacity(conf: Tensor, lo_hi: tuple[float, float]) -> Tensor:  # [N] -> [N]
    """Linear map of confidence / its 95th percentile (clamped to [0, 1]) onto [lo, hi]."""
    c = conf.float()
    q = float(torch.quantile(c, 0.95)) if c.numel() else 1.0
    c = (c / max(q, 1e-12)).clamp(0.0, 1.0)
    return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * c


def viewmat_from_c2w(c2w: Tensor) -> Tensor:  # [C, 3, 4] nerfstudio (OpenGL axes) -> [C, 4, 4] world->camera OpenCV
    """World-to-camera matrices in OpenCV axes from nerfstudio camera-to-world (no torch.compile)."""
    R = flip_camera_axes(c2w[:, :3, :3])  # OpenGL -> OpenCV camera axes
    t = c2w[:, :3, 3:4]
    Rt = R.transpose(1, 2)
    V = torch.zeros(c2w.shape[0], 4, 4, device=c2w.device, dtype=c2w.dtype)
    V[:, 3, 3] = 1.0
    V[:, :3, :3] = Rt
    V[:, :3, 3:4] = -torch.bmm(Rt, t)
    return V


class _LazyLPIPS:
    """LPIPS built on first call, on the inputs' device; None after a failure (logged once). Not a Module, so
    its network never enters checkpoints."""

    def __init__(self) -> None:
        self.metric: Any = None
        self.failed = False

    def __call__(self, a: Tensor, b: Tensor) -> Tensor | None:
        if self.failed:
            return None
        if self.metric is None:
            try:
                from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

                self.metric = LearnedPerceptualImagePatchSimilarity(normalize=True).to(a.device)
            except Exception as exc:  # noqa: BLE001 - offline weight download, missing package, ...
                log.warning("LPIPS left out of the metrics: its network could not be built (%s)", exc)
                self.failed = True
                return None
        return self.metric(a, b)


class MslamSplatfactoModel(SplatfactoModel):
    """Splatfacto seeded from SLAM points (see module docstring)."""

    config: MslamSplatfactoModelConfig

    def populate_modules(self) -> None:
        from gsplat.strategy import DefaultStrategy
        from nerfstudio.utils.colors import get_color
        from pytorch_msssim import SSIM
        from torchmetrics.image import PeakSignalNoiseRatio

        cfg = self.config
        meta: dict[str, Any] = dict(self.kwargs.get("metadata") or {})
        seeded = self.seed_points is not None and not cfg.random_init and self.seed_points[0].shape[0] > 0
        if not seeded and not cfg.random_init:
            log.warning(
                "no seed points from the dataparser (nerfstudio-data needs --load-3D-points True): "
                "random initialisation with %d splats",
                cfg.num_random,
            )
        if seeded:
            assert self.seed_points is not None
            means = self.seed_points[0].detach().float().cpu().clone()  # [N, 3]
            scales = torch.log(local_spacing(means, cfg.init_scale_knn, cfg.init_scale_clamp))[:, None].repeat(1, 3)
        else:
            means = (torch.rand((cfg.num_random, 3)) - 0.5) * cfg.random_scale
            spacing = local_spacing(means, 3, (0.0, math.inf))  # splatfacto's own rule
            scales = torch.log(spacing)[:, None].repeat(1, 3)
        n = means.shape[0]
        dim_sh = num_sh_bases(cfg.sh_degree)
        if seeded and self.seed_points is not None and self.seed_points[1].shape[0] == n:
            rgb = self.seed_points[1].detach().float().cpu() / 255.0  # [N, 3]
            shs = torch.zeros(n, dim_sh, 3)
            shs[:, 0] = RGB2SH(rgb) if cfg.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
            features_dc, features_rest = shs[:, 0].clone(), shs[:, 1:].clone()
        else:
            features_dc, features_rest = torch.rand(n, 3), torch.zeros(n, dim_sh - 1, 3)
        conf = meta.get("points3D_confidence")
        if seeded and conf is not None and len(conf) == n:
            opa = confidence_to_opacity(torch.as_tensor(conf).reshape(-1), cfg.init_opacity_range)
        else:
            opa = torch.full((n,), cfg.init_opacity if seeded else 0.1)
        kf = meta.get("points3D_keyframe")
        if seeded and kf is not None and len(kf) == n:
            keyframe = torch.as_tensor(kf).reshape(-1).long().cpu()
        else:
            keyframe = torch.full((n,), -1, dtype=torch.long)

        self.gauss_params = torch.nn.ParameterDict(
            {
                "means": torch.nn.Parameter(means),
                "scales": torch.nn.Parameter(scales),
                "quats": torch.nn.Parameter(random_quat_tensor(n)),
                "features_dc": torch.nn.Parameter(features_dc),
                "features_rest": torch.nn.Parameter(features_rest),
                "opacities": torch.nn.Parameter(torch.logit(opa.clamp(1e-4, 1 - 1e-4))[:, None]),
            }
        )
        self.register_buffer("splat_keyframe", keyframe.clone())
        self.camera_optimizer = cfg.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = _LazyLPIPS()
        self.step = 0
        self.crop_box = None
        if cfg.background_color == "random":
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])
        else:
            self.background_color = get_color(cfg.background_color)
        if cfg.use_bilateral_grid:
            from nerfstudio.model_components.lib_bilagrid import BilateralGrid

            self.bil_grids = BilateralGrid(
                num=self.num_train_data, grid_X=cfg.grid_shape[0], grid_Y=cfg.grid_shape[1], grid_W=cfg.grid_shape[2]
            )
        self.strategy = DefaultStrategy(
            prune_opa=cfg.cull_alpha_thresh,
            grow_grad2d=cfg.densify_grad_thresh,
            grow_scale3d=cfg.densify_size_thresh,
            grow_scale2d=cfg.split_screen_size,
            prune_scale3d=cfg.cull_scale_thresh,
            prune_scale2d=cfg.cull_screen_size,
            refine_scale2d_stop_iter=cfg.stop_screen_size_at,
            refine_start_iter=cfg.warmup_length,
            refine_stop_iter=cfg.stop_split_at,
            reset_every=cfg.reset_alpha_every * cfg.refine_every,
            refine_every=cfg.refine_every,
            pause_refine_after_reset=self.num_train_data + cfg.refine_every,
            absgrad=cfg.use_absgrad,
            revised_opacity=False,
            verbose=False,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        # gsplat's split/duplicate/prune ops index every tensor in the state: the keyframe ids follow the splats.
        self.strategy_state["keyframe"] = self.splat_keyframe

    # ------------------------------------------------------------------------------------------ device
    def use_gsplat(self, device: torch.device) -> bool:
        """Whether this forward pass uses gsplat's CUDA rasteriser."""
        if self.config.rasterizer == "torch":
            return False
        if self.config.rasterizer == "gsplat":
            return True
        return device.type == "cuda"

    def get_loss_dict(self, outputs: dict, batch: dict, metrics_dict: dict | None = None) -> dict:
        """splatfacto's losses, plus the depth loss (`depth_loss_mult`) when the batch has a depth image."""
        loss = super().get_loss_dict(outputs, batch, metrics_dict)
        if self.config.depth_loss_mult > 0 and "depth_image" in batch and outputs.get("depth") is not None:
            loss["depth_loss"] = self.config.depth_loss_mult * depth_l1(outputs["depth"], batch["depth_image"])
        return loss

    def get_training_callbacks(self, training_callback_attributes: Any) -> list:
        """splatfacto's callbacks, plus (live mode: the dataparser's ``mslam_live`` session) the SLAM refresh
        before every step (`mslam_ns.nerfstudio.live`)."""
        cbs = super().get_training_callbacks(training_callback_attributes)
        live = (self.kwargs.get("metadata") or {}).get("mslam_live")
        if live is not None:
            attrs = training_callback_attributes
            viewer = getattr(getattr(attrs, "trainer", None), "viewer_state", None)
            self.slam_refresh = live.make_strategy(attrs.pipeline, attrs.optimizers, viewer)
            cbs.append(self.slam_refresh.training_callback())
        return cbs

    def step_post_backward(self, step: int) -> None:
        self.strategy_state["keyframe"] = self.strategy_state["keyframe"].to(self.means.device)
        super().step_post_backward(step)
        self.splat_keyframe = self.strategy_state["keyframe"]

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        n = dict["gauss_params.means"].shape[0] if "gauss_params.means" in dict else dict["means"].shape[0]
        self.splat_keyframe = torch.full((n,), -1, dtype=torch.long, device=self.splat_keyframe.device)
        super().load_state_dict(dict, **kwargs)
        self.strategy_state["keyframe"] = self.splat_keyframe

    # ------------------------------------------------------------------------------------------ render
    def get_outputs(self, camera: Cameras) -> dict[str, torch.Tensor | list]:
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds
        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                w, h = int(camera.width.item()), int(camera.height.item())
                return self.get_empty_outputs(w, h, self.background_color)

        def sel(t: Tensor) -> Tensor:
            return t if crop_ids is None else t[crop_ids]

        means, scales, quats = sel(self.means), sel(self.scales), sel(self.quats)
        opac, f_dc, f_rest = sel(self.opacities), sel(self.features_dc), sel(self.features_rest)
        colors = torch.cat((f_dc[:, None, :], f_rest), dim=1)

        scale_fac = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale_fac)
        viewmat = viewmat_from_c2w(c2w)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(scale_fac)  # type: ignore[arg-type]

        with_depth = self.config.output_depth_during_training or self.config.depth_loss_mult > 0 or not self.training
        render_mode = "RGB+ED" if with_depth else "RGB"
        if self.config.sh_degree > 0:
            sh_degree: int | None = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors = torch.sigmoid(colors).squeeze(1)
            sh_degree = None
        kwargs = dict(
            means=means,
            quats=quats,
            scales=torch.exp(scales),
            opacities=torch.sigmoid(opac).squeeze(-1),
            colors=colors,
            viewmats=viewmat,
            Ks=K,
            width=W,
            height=H,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            sh_degree=sh_degree,
            rasterize_mode=self.config.rasterize_mode,
        )
        if self.use_gsplat(means.device):
            from gsplat.rendering import rasterization

            render, alpha, self.info = rasterization(
                packed=False, sparse_grad=False, absgrad=self.strategy.absgrad, **kwargs
            )
        else:
            from mslam_ns.nerfstudio.raster import forbid_gsplat_cuda, rasterize

            forbid_gsplat_cuda()
            self.strategy.absgrad = False  # absgrad exists only in gsplat's CUDA backward
            render, alpha, self.info = rasterize(**kwargs)
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )

        background = self._get_background_color()
        rgb = torch.clamp(render[:, ..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training:
            if camera.metadata is not None and "cam_idx" in camera.metadata:
                rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], H, W)
        depth_im = None
        if render_mode == "RGB+ED":
            depth_im = render[:, ..., 3:4]
            depth_im = torch.where(alpha > 0, depth_im, depth_im.detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(H, W, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth_im, "accumulation": alpha.squeeze(0), "background": background}

    # ------------------------------------------------------------------------------------------ metrics
    def get_image_metrics_and_images(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        pred = outputs["rgb"]
        combined = torch.cat([gt, pred], dim=1)
        gt_b = torch.moveaxis(gt, -1, 0)[None]
        pred_b = torch.moveaxis(pred, -1, 0)[None]
        metrics: dict[str, float] = {
            "psnr": float(self.psnr(gt_b, pred_b).item()),
            "ssim": float(self.ssim(gt_b, pred_b)),
        }
        if self.config.lpips_metric:
            lp = self.lpips(gt_b, pred_b)
            if lp is not None:
                metrics["lpips"] = float(lp)
        return metrics, {"img": combined}
