"""`cnnc fmt`, `cnnc lsp` and `cnnc draw`: tools for writing specs. Nothing heavy is imported here, so
that `cnnc check` stays fast; each handler loads what it needs."""

from __future__ import annotations

import argparse
import sys

INNERMOST = 0   # --collapse-blocks without a depth (tools/layout.py reads 0 so)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    fmt = subparsers.add_parser("fmt", help="format .cnn files in place (canonical layout; comments kept)")
    fmt.add_argument("paths", nargs="+", metavar="PATH", help=".cnn files or folders of them; - reads stdin")
    fmt.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    fmt.add_argument("--diff", action="store_true", help="write nothing; print the changes as a unified diff")
    fmt.set_defaults(handler=run_fmt)

    draw = subparsers.add_parser("draw", help="draw the network as an SVG (or PNG) picture")
    draw.add_argument("spec", metavar="SPEC")
    draw.add_argument("-o", "--output", metavar="FILE", required=True, help="the picture: FILE.svg or FILE.png")
    draw.add_argument("--format", choices=("svg", "png"), default=None,
                      help="the picture's format (default: from the file's suffix)")
    draw.add_argument("--collapse-blocks", nargs="?", type=int, const=INNERMOST, default=None, metavar="DEPTH",
                      help="draw block instances as single boxes: the innermost ones (those holding no other), "
                           "or those nested DEPTH deep (1: the outermost); the frames around them stay")
    draw.set_defaults(handler=run_draw)

    lsp = subparsers.add_parser("lsp", help="run the language server (LSP over stdin and stdout) for editors")
    lsp.set_defaults(handler=run_lsp)


def run_fmt(args: argparse.Namespace) -> int:
    from cnnc.tools.fmt_cli import run

    return run(args.paths, check=args.check, diff=args.diff)


def run_draw(args: argparse.Namespace) -> int:
    from cnnc.tools.draw import draw_file

    if args.collapse_blocks is not None and args.collapse_blocks < 0:
        from cnnc.errors import UsageError

        raise UsageError("--collapse-blocks takes a depth of 1 or more (or none, for the innermost blocks)")
    draw_file(args.spec, args.output, args.collapse_blocks, args.format)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def run_lsp(args: argparse.Namespace) -> int:
    try:
        from cnnc.tools.lsp import main
    except ModuleNotFoundError as missing:
        if missing.name not in ("pygls", "lsprotocol"):
            raise
        from cnnc.errors import CnncError

        raise CnncError(f"the language server needs {missing.name}: pip install 'cnnc[tools]'") from None
    main()
    return 0
