"""Model surgery: grow a trained net into a deeper one that computes the same function.

Section 1 of the paper: "There exists a solution by construction to the deeper model: the added
layers are identity mapping, and the other layers are copied from the learned shallower model."
`grow` builds that solution. The stem, the head and every existing block are copied; the added
blocks go after the existing blocks of each stage (the first block of a stage, which
downsamples, is always a copied one; a pooled net's stages downsample in their transitions,
which are copied too), so every added block maps C channels to C channels at stride 1 and can
be made the identity:

- residual block: out = relu(x + F(x)). Zeroing the last BN's scale AND shift makes F(x) = 0 in
  train and eval mode alike, and relu(x) = x because x is itself a block output (post-ReLU).
  Its other layers keep their He initialisation, so gradients reach them as soon as training
  moves the zeroed BN (the zero_init_residual trick of arXiv 1706.02677).
- plain net: refused. Without a shortcut there is no residual branch to zero; a plain block
  copies its input only with hand-set identity kernels and running statistics, which batch
  statistics undo as soon as training resumes. That a solver does not find the identity
  mapping through plain layers is the degradation problem (Fig. 1), not a construction.
- shortcut option C: refused, for the same reason. Every C block's shortcut is a projection,
  1x1 conv + BN, so an added block is relu(BN_F(.) + BN_P(conv(x))). With running statistics a
  dirac kernel and an identity BN make the projection x, but in train mode each BN normalises
  with its batch statistics: each channel of BN_F + BN_P has batch mean beta_F + beta_P whatever
  the input, while relu(.) = x needs the sum to equal x wherever x > 0, so for batches positive
  in a channel its mean would have to follow x's. No weights make the block the identity once
  training resumes (and the running statistics then drift from the identity too). Options A
  and B keep identity shortcuts at stride 1, so their added blocks are exact in both modes.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .blocks import BasicBlock, Bottleneck
from .registry import BASE_WIDTHS, REGISTRY, Arch, create_model, get_arch
from .resnet import ResNet

BLOCK_NAMES = {BasicBlock: "basic", Bottleneck: "bottleneck"}


def infer_arch(model: ResNet) -> Arch:
    """The registry entry a ResNet was built as (family, block type, blocks per stage, residual)."""
    block = type(model.blocks()[0])
    layers = tuple(len(stage) for _, stage in model.stages())
    residual = model.block_options["residual"]
    family = "pooled" if model.downsampling == "pool" else model.stem_kind
    width = model.conv1.out_channels // BASE_WIDTHS[family][0]
    for arch in REGISTRY.values():
        if (arch.family, arch.block, arch.layers, arch.residual) == (
                family, block, layers, residual):
            return arch if width == 1 else get_arch(f"{arch.name}-w{width}")
    raise UserError(f"not a registered architecture: {family} family, "
                    f"{BLOCK_NAMES.get(block, block.__name__)} blocks {layers}")


def grow(model: ResNet, to: str, *, shortcut: str | None = None,
         stride_in: str | None = None, seed: int = 0) -> ResNet:
    """A deeper ResNet `to` that computes exactly model's function, in eval and train mode
    (section 1).

    shortcut/stride_in, when given, must equal the model's own options (a grown net keeps them:
    changing a copied block's shortcut would change its function). The result is in the same
    train/eval mode as model, on the CPU. seed: the added blocks' He-initialised layers are
    drawn from it (the global RNG is left as it was), so a grow is reproducible. Raises
    UserError when no such construction exists.
    """
    src, dst = infer_arch(model), get_arch(to)
    check_growable(src, dst, model.block_options, shortcut=shortcut, stride_in=stride_in)
    opts = model.block_options
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        deeper = create_model(to, num_classes=model.num_classes,
                              in_chans=model.conv1.in_channels, shortcut=opts["shortcut"],
                              stride_in=opts["stride_in"], pad_sides=opts["pad_sides"])
    # Every tensor of the shallow net has the same name and shape in the deeper one (layerK.i
    # for i < its block count), so one load copies stem, head and the existing blocks.
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    missing, unexpected = deeper.load_state_dict(state, strict=False)
    assert not unexpected, unexpected  # guaranteed by check_growable's stage comparison
    for (_, old), (_, new) in zip(model.stages(), deeper.stages()):
        for block in list(new)[len(old):]:
            make_identity(block)
    return deeper.train(model.training)


def check_growable(src: Arch, dst: Arch, options: dict, *, shortcut: str | None = None,
                   stride_in: str | None = None) -> None:
    """UserError with the reason when `src` cannot be grown into `dst` exactly."""
    what = f"cannot grow {src.name} into {dst.name}"
    if src.family != dst.family:
        raise UserError(f"{what}: different families ({src.family} vs {dst.family}) have "
                        "different stems and stage widths")
    if src.width != dst.width:
        raise UserError(f"{what}: different widths ({src.widths} vs {dst.widths} filters per "
                        "stage), so the trained layers cannot be copied")
    if not src.residual:
        raise UserError(f"{what}: a plain net has no shortcuts, so an added block cannot be made "
                        "the identity by zeroing its residual branch (section 1's construction "
                        "needs F(x) + x)")
    if not dst.residual:
        raise UserError(f"{what}: a residual net grows only into a residual net (removing "
                        "shortcuts changes the function of the copied blocks)")
    if options["activation"] != "relu":
        raise UserError(f"{what}: its activation is {options['activation']}, and an added block "
                        "is the identity only where act(x) = x for x >= 0 (ReLU): zeroing its "
                        "residual branch would still apply the activation to x (train with "
                        "--activation relu for a net that grows; the fast recipe uses gelu)")
    if options["shortcut"] == "C":
        raise UserError(f"{what}: with shortcut C every added block has a projection shortcut "
                        "(1x1 conv + BN) whose BN is the identity only with running statistics; "
                        "in training mode it normalises each batch, so the block is not the "
                        "identity (options A and B have identity shortcuts)")
    if src.block is not dst.block:
        raise UserError(f"{what}: different block types ({BLOCK_NAMES[src.block]} vs "
                        f"{BLOCK_NAMES[dst.block]}), so the trained blocks cannot be copied")
    if dst.depth <= src.depth or any(d < s for s, d in zip(src.layers, dst.layers)):
        raise UserError(f"{what}: the target must be deeper, with at least as many blocks in "
                        f"every stage ({src.layers} -> {dst.layers})")
    for name, wanted in (("shortcut", shortcut), ("stride_in", stride_in)):
        if wanted is not None and wanted != options[name]:
            raise UserError(f"{what}: {name} {wanted} differs from the trained net's "
                            f"{options[name]} (the copied blocks would compute another function)")


@torch.no_grad()
def make_identity(block: BasicBlock | Bottleneck) -> None:
    """Makes a stride-1, same-width residual block with an identity shortcut (option A or B)
    compute the identity on non-negative inputs, in train and eval mode."""
    if block.downsample is not None:  # option C: see the module docstring
        raise ValueError("a block with a projection shortcut cannot be made the identity")
    bn = block.last_bn()
    bn.weight.zero_()  # F(x) = 0 * x_hat + 0, whatever the statistics
    bn.bias.zero_()
