"""Coverage: prune many architectures once each and print a markdown table (for the README).

Random initialisation, no downloads, small inputs, few rounds, so that it runs in minutes on a
CPU. Each row: the format the model was handed over in, the fraction of its parameters that are
prunable, the wall time, the precision the run used (and the power-of-two scale), the layers that
ended empty, the layers whose weights all scored 0 in some round, and the ops the scoring passes
replaced by their linear part (synflow/linearise.py). A model that fails gets its error instead.

    python bench/coverage.py                    # every architecture, sparsity 0.9, 3 rounds
    python bench/coverage.py --only vit_b_16 gpt_like --iterations 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from synflow import PruneConfig  # noqa: E402
from synflow.engine import prune  # noqa: E402
from synflow.errors import SynflowError  # noqa: E402
from tests.synflow import arch_nets, nets  # noqa: E402

IMAGE = "1,3,64,64"


def _tv(name: str, **kwargs):
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return build


def _vit() -> nn.Module:
    """torchvision zero-initialises the classifier head: re-initialised, as a user would."""
    import torchvision

    model = torchvision.models.vit_b_16(weights=None, image_size=64, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def _r3d() -> nn.Module:
    import torchvision

    return torchvision.models.video.r3d_18(weights=None, num_classes=10)


#: name -> (builder, inputs, how it is handed over: "script" | "trace" | "eager")
ARCHITECTURES: dict[str, tuple] = {
    "resnet18": (_tv("resnet18", num_classes=10), [IMAGE], "script"),
    "resnet50": (_tv("resnet50", num_classes=10), [IMAGE], "script"),
    "resnext50_32x4d": (_tv("resnext50_32x4d", num_classes=10), [IMAGE], "script"),
    "wide_resnet50_2": (_tv("wide_resnet50_2", num_classes=10), [IMAGE], "script"),
    "vgg11_bn": (_tv("vgg11_bn", num_classes=10), [IMAGE], "script"),
    "alexnet": (_tv("alexnet", num_classes=10), [IMAGE], "script"),
    "densenet121": (_tv("densenet121", num_classes=10), [IMAGE], "script"),
    "googlenet": (
        _tv("googlenet", num_classes=10, aux_logits=False, init_weights=True),
        [IMAGE],
        "trace",
    ),
    "mobilenet_v2": (_tv("mobilenet_v2", num_classes=10), [IMAGE], "script"),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small", num_classes=10), [IMAGE], "script"),
    "mobilenet_v3_large": (_tv("mobilenet_v3_large", num_classes=10), [IMAGE], "script"),
    "efficientnet_b0": (_tv("efficientnet_b0", num_classes=10), [IMAGE], "script"),
    "efficientnet_v2_s": (_tv("efficientnet_v2_s", num_classes=10), [IMAGE], "script"),
    "regnet_x_400mf": (_tv("regnet_x_400mf", num_classes=10), [IMAGE], "script"),
    "regnet_y_400mf": (_tv("regnet_y_400mf", num_classes=10), [IMAGE], "script"),
    "shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5", num_classes=10), [IMAGE], "script"),
    "squeezenet1_0": (_tv("squeezenet1_0", num_classes=10), [IMAGE], "script"),
    "mnasnet0_5": (_tv("mnasnet0_5", num_classes=10), [IMAGE], "script"),
    "convnext_tiny": (_tv("convnext_tiny", num_classes=10), [IMAGE], "script"),
    "vit_b_16 (head re-init)": (_vit, [IMAGE], "eager"),
    "swin_t": (_tv("swin_t", num_classes=10), [IMAGE], "eager"),
    "r3d_18 (Conv3d video)": (_r3d, ["1,3,4,32,32"], "script"),
    "bert_like (post-LN, tokens)": (arch_nets.BertLike, ["int64:1,16"], "script"),
    "gpt_like (pre-LN, causal)": (arch_nets.GptLike, ["int64:1,16"], "script"),
    "lstm_gru": (arch_nets.RnnClassifier, ["1,10,8"], "script"),
    "conv1d": (arch_nets.conv1d_net, ["1,4,64"], "script"),
    "conv3d": (arch_nets.conv3d_net, ["1,2,8,16,16"], "script"),
    "conv_transpose": (arch_nets.conv_transpose_net, [IMAGE], "script"),
}


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _names(keys: list[str], limit: int = 3) -> str:
    if not keys:
        return "none"
    shown = ", ".join(f"`{k}`" for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit})" if len(keys) > limit else "")


def run_one(name: str, sparsity: float, iterations: int) -> str:
    builder, inputs, how = ARCHITECTURES[name]
    torch.manual_seed(0)
    module = builder().eval()
    fmt = {"script": "TorchScript (scripted)", "trace": "TorchScript (traced)"}.get(how, "eager")
    example = None
    if how == "trace":
        example = tuple(int(d) for d in inputs[0].split(":")[-1].split(","))
    loaded = nets.as_loaded(module, how, example)
    total = sum(p.numel() for p in loaded.module.parameters())
    config = PruneConfig(sparsity=sparsity, inputs=inputs, iterations=iterations)
    started = time.perf_counter()
    try:
        result = prune(loaded, config)
    except SynflowError as exc:
        return f"| {name} | {fmt} | | {time.perf_counter() - started:.1f} s | fails: {exc} | | | |"
    seconds = time.perf_counter() - started
    prunable = sum(m.numel() for m in result.masks.values())
    emptied = [k for k, m in result.masks.items() if not bool(m.any())]
    zero = list(result.zero_score_layers)
    precision = result.precision + (f" x2^{result.scale[0]}" if result.scale else "")
    if result.precision_note:
        precision += f" ({result.precision_note})"
    ops = ", ".join(sorted({k.removesuffix("_") for k in result.linearised_ops} - _BACKWARD))
    return (
        f"| {name} | {fmt} | {prunable / total:.1%} of {_count(total)} "
        f"| {seconds:.1f} s | {precision} | {_names(emptied)} | {_names(zero)} | {ops or '-'} |"
    )


_BACKWARD = {
    "native_layer_norm_backward", "_softmax_backward_data", "embedding_dense_backward",
    "sigmoid_backward", "hardsigmoid_backward", "silu_backward", "gelu_backward",
    "tanh_backward", "hardswish_backward", "hardtanh_backward", "elu_backward", "mish_backward",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    names = args.only or list(ARCHITECTURES)
    print(f"sparsity {args.sparsity}, {args.iterations} rounds, precision auto, CPU\n")
    print(
        "| architecture | format | prunable | time | precision | emptied layers "
        "| zero-score layers | linearised ops |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        print(run_one(name, args.sparsity, args.iterations), flush=True)


if __name__ == "__main__":
    main()
