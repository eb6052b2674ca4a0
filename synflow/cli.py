"""`synflow` command line.

`synflow prune MODEL ...` runs the engine on this machine; its flags are generated from
`PruneConfig`, so they match the HTTP fields one for one. `synflow example NAME OUT` writes a
randomly initialised torchvision model as TorchScript to try things on. Other packages add
subcommands (the service adds `serve` and the remote commands) through the `synflow.commands`
entry-point group, so this engine package never imports the web or queue stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from synflow.config import PruneConfig

# Fields the CLI sets with a flag of its own shape rather than the generic one.
# "flag" renames the flag (`inputs` is given one `--input` per forward argument).
_FLAG_OVERRIDES: dict[str, dict[str, Any]] = {
    "exclude": {"action": "append", "metavar": "GLOB", "default": None},
    "input_shape": {"metavar": "SHAPE", "type": str},
    "inputs": {
        "flag": "--input",
        "action": "append",
        "metavar": "SPEC",
        "type": str,
        "help": "one [dtype:]d0,d1,... per forward argument, in order (repeat the flag), e.g. "
        "--input int64:1,128 --input int64:1,128; instead of --input-shape",
    },
}


def _scalar_type(annotation: Any) -> Any:
    """`float | None` -> float; anything else unchanged."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not Literal and len(args) == 1:
        return args[0]
    return annotation


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `PruneConfig` field (`prune_bias` -> `--prune-bias`), help from the field."""
    for name, field in PruneConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "help": field.description, "default": None}
        kind = _scalar_type(field.annotation)
        if kind is bool:
            kwargs["action"] = "store_true"
        elif get_origin(kind) is Literal:
            kwargs["choices"] = list(get_args(kind))
        elif kind in (int, float, str):
            kwargs["type"] = kind
        override = dict(_FLAG_OVERRIDES.get(name, {}))
        flag = override.pop("flag", flag)
        kwargs.update(override)
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    values = {
        name: getattr(args, name)
        for name in PruneConfig.model_fields
        if getattr(args, name, None) is not None
    }
    if "exclude" in values:  # `--exclude a,b` splits at the comma, as the HTTP field does
        values["exclude"] = [
            p.strip() for v in values["exclude"] for p in v.split(",") if p.strip()
        ]
    return PruneConfig(**values)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _progress_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="round", desc="pruning", disable=None, file=sys.stderr)

    def update(p) -> None:
        bar.update(p.iteration - bar.n)
        bar.set_postfix(density=f"{p.density:.4g}", refresh=False)
        if p.iteration == p.iterations:
            bar.close()

    return update


def _cmd_prune(args: argparse.Namespace) -> int:
    from synflow.pipeline import prune_file
    from synflow.plot import REPORT_PNG, write_report_png

    config = config_from_args(args)
    report = prune_file(
        args.model,
        config,
        args.out,
        device=args.device,
        precision=args.precision,
        progress=_progress_bar(config.resolved_iterations),
        calibration=args.calibration,
    )
    write_report_png(report, Path(args.out) / REPORT_PNG)
    totals = report["totals"]
    print(
        f"kept {totals['kept']:,} of {totals['prunable']:,} prunable weights "
        f"(sparsity {totals['sparsity']:.6f}) in {report['timing']['wall_seconds']:.2f} s; "
        f"artifacts in {args.out}"
    )
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from synflow.examples import write_example

    shape = write_example(args.name, args.out, num_classes=args.num_classes)
    print(f"wrote {args.out} ({args.name}, random init); input shape {','.join(map(str, shape))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from synflow import __version__

    parser = argparse.ArgumentParser(
        prog="synflow", description="Data-free pruning at initialisation (SynFlow)."
    )
    parser.add_argument("--version", action="version", version=f"synflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser(
        "prune", help="prune a TorchScript, torch.export (.pt2) or ONNX model file"
    )
    prune.add_argument(
        "model",
        help="path to a TorchScript (.pt), torch.export (.pt2) or ONNX (.onnx, external data "
        "files beside it) file, or a zip of an .onnx and its data files",
    )
    prune.add_argument("--out", required=True, help="directory for the artifacts")
    add_config_arguments(prune)
    prune.add_argument(
        "--calibration",
        metavar="FILE",
        help="safetensors with `inputs` (batch first) and `labels` (int64): the data of the "
        "data-driven methods (snip, grasp); refused with the data-free ones",
    )
    prune.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    prune.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "float64"],
        help="SynFlow arithmetic (auto: float32, float64 where float32 overflows)",
    )
    prune.set_defaults(handler=_cmd_prune)

    from synflow.examples import EXAMPLES

    example = sub.add_parser("example", help="write a random-init example model (TorchScript)")
    example.add_argument("name", choices=sorted(EXAMPLES))
    example.add_argument("out", help="output .pt path")
    example.add_argument("--num-classes", type=int, default=10)
    example.set_defaults(handler=_cmd_example)

    for ep in entry_points(group="synflow.commands"):
        try:
            register = ep.load()
        except ModuleNotFoundError as exc:
            if exc.name and ep.module.startswith(exc.name):
                continue  # that part of the product is not installed here
            raise
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from synflow.errors import SynflowError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValidationError as exc:
        print(f"synflow: error: {validation_message(exc)}", file=sys.stderr)
    except SynflowError as exc:
        print(f"synflow: error: {exc.message}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"synflow: error: no such file: {exc.filename}", file=sys.stderr)
    except KeyboardInterrupt:
        print("synflow: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
