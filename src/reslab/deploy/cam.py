"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017): where in the image the evidence for a class lies.

For class c and a stage's output A (K maps of h x w), the weight of map k is the spatially
averaged gradient of the class score (the logit, before the softmax) with respect to it,
alpha_k = mean_ij dy_c / dA_k[i, j] (the paper's eq. 1), and the map is
ReLU(sum_k alpha_k A_k) (eq. 2): only what speaks for the class. After the last stage the net
is global average pooling and the fc layer, so there alpha_k = w_ck / (h w) and Grad-CAM is the
class activation map of Zhou et al. 2016 (CAM): sum_k w_ck A_k (tested).

Implementation: the model's own forward pass with a forward hook on the chosen stage
(`ResNet.stages()`: layer1..layer4 for the ImageNet family, layer1..layer3 for CIFAR), then
one `torch.autograd.grad` of the chosen logits with respect to that stage's output. No library:
captum's LayerGradCam or the grad-cam package would do the same hook and gradient, and still need
the layer lookup, the upsampling and the normalisation below; the grad-cam package also pulls in
OpenCV. About twenty lines of our own, tested against CAM's closed form and against images whose
evidence is known, cost less than a dependency.

Geometry. The heat map is computed on the batch exactly as the model sees it (the files go
through `deploy.predict.prepare_images`, the path `reslab predict` takes: shorter side resized to
H / crop_fraction, centre H x W cut, normalised) and is upsampled bilinearly (half-pixel
centres, align_corners=False) from the stage's h x w grid to that H x W crop: heat[i, j] belongs
to the crop's pixel (i, j). It is drawn over that crop, de-normalised (`display_images`), not
over the original file. Back in the original image (h0 x w0), the crop is its centre: the image
was scaled by s = round(min(H, W) / crop_fraction) / min(h0, w0), so the crop covers the
centre H / s x W / s original pixels (min(h0, w0) * crop_fraction square for a square input),
and the centre of crop pixel (i, j) lies at (continuous coordinates, pixel centres at +0.5)
((h0 - H / s) / 2 + (i + 0.5) / s, (w0 - W / s) / 2 + (j + 0.5) / s) of the original.
What lies outside the crop the model never saw, and it has no heat.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import UserError
from ..weights.record import Record
from .predict import chunks, prepare_images


def cam_layers(model: nn.Module) -> list[str]:
    """The layers Grad-CAM can look at: the model's stages, in forward order."""
    return [name for name, _ in model.stages()]


def cam_layer(model: nn.Module, name: str | None = None) -> str:
    """name checked against the model's stages (UserError listing them); None: the last stage,
    the most semantic maps at the coarsest resolution (the paper's choice)."""
    names = cam_layers(model)
    if name is None:
        return names[-1]
    if name not in names:
        raise UserError(f"unknown Grad-CAM layer '{name}' (this model's layers: "
                        f"{', '.join(names)})")
    return name


def grad_cam(model: nn.Module, x: torch.Tensor, classes: Sequence[int] | torch.Tensor,
             layer: str | None = None) -> torch.Tensor:
    """Grad-CAM heat maps (N, H, W) in [0, 1] for the batch x (N, C, H, W), prepared as the
    model's input, one per image for the class classes[i], at the stage `layer` (default the
    last). Each map is divided by its maximum; a map without positive evidence is all zeros.
    The model should be in eval mode (BN with its running statistics, as at prediction)."""
    module = dict(model.stages())[cam_layer(model, layer)]
    idx = torch.as_tensor(classes, device=x.device).long().view(-1, 1)
    kept: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_(True))
            acts = kept[-1]
            grads, = torch.autograd.grad(logits.float().gather(1, idx).sum(), acts)
    finally:
        handle.remove()
    with torch.no_grad():
        weights = grads.float().mean((2, 3), keepdim=True)          # alpha_k^c (eq. 1)
        cam = F.relu((weights * acts.float()).sum(1, keepdim=True))  # eq. 2
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.amax((1, 2), keepdim=True)
        return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), 0.0)


def display_images(record: Record, x: torch.Tensor) -> torch.Tensor:
    """The model's input batch de-normalised to [0, 1] pixels: the crops the model saw."""
    return record.preprocess.normalizer().invert(x).clamp(0, 1)


def cam_files(model: nn.Module, record: Record, paths: Sequence[str | PathLike],
              classes: Sequence[int], layer: str | None = None, *, batch_size: int = 32,
              device: str | torch.device = "cpu"
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(crop (C, H, W) in [0, 1], heat map (H, W) in [0, 1]) per file, in order: Grad-CAM for
    classes[i] on the file prepared as `reslab predict` prepares it (see the module docstring)."""
    model = model.to(device).eval()
    for files, cls in zip(chunks(list(paths), batch_size), chunks(list(classes), batch_size)):
        x = prepare_images(record, files).to(device)
        heat = grad_cam(model, x, cls, layer).cpu()
        yield from zip(display_images(record, x).cpu(), heat)


def cam_paths(paths: Sequence[str | PathLike], out_dir: str | PathLike) -> list[Path]:
    """out_dir/<stem>.cam.png per file; a stem already taken (two cat.jpg from different
    folders, or cat.jpg and Cat.png on a case-insensitive disk) gets -2, -3, ... in order."""
    taken: set[str] = set()
    out = []
    for path in paths:
        stem, name, n = Path(path).stem, Path(path).stem, 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.casefold())
        out.append(Path(out_dir) / f"{name}.cam.png")
    return out


def cam_overlay(image: torch.Tensor, heat: torch.Tensor, size: int = 224) -> Image.Image:
    """The heat map (H, W in [0, 1]) in the jet colours over the crop the model saw (C, H, W in
    [0, 1]), as a size x size-ish RGB picture (longer side `size`): every input pixel a square,
    as cam_figure draws it; the web page shows it."""
    from matplotlib import colormaps

    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    colours = torch.from_numpy(colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1)
    blend = (0.55 * rgb + 0.45 * colours.float()).clamp(0, 1)
    h, w = blend.shape[-2:]
    scale = max(1, size // max(h, w))
    pixels = (blend.permute(1, 2, 0) * 255).round().byte().numpy()
    return Image.fromarray(pixels, "RGB").resize((w * scale, h * scale), Image.NEAREST)
