"""`alignkit models list|convert`."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list built-in models, convert GGUF files")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="built-in model names and whether they are cached")
    listing.set_defaults(run=run_list)
    convert = actions.add_parser(
        "convert", help="GGUF file or built-in name -> Hugging Face folder"
    )
    convert.add_argument("src", help="a .gguf file or a built-in model name")
    convert.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    convert.set_defaults(run=run_convert)


def run_list(args) -> int:
    from alignkit.fsutil import alignkit_home
    from alignkit.models.builtin import BUILTIN_MODELS, builtin_model_dir
    from alignkit.models.convert import is_complete_model_dir

    print(f"built-in models (cache: {alignkit_home() / 'models'}):")
    for name, spec in BUILTIN_MODELS.items():
        folder = builtin_model_dir(spec)
        state = (
            f"converted: {folder}"
            if is_complete_model_dir(folder)
            else "not converted yet (first use converts)"
        )
        print(
            f"  {name:<24} {spec.description}\n  {'':<24} package {spec.package}=={spec.version}; {state}"
        )
    return 0


def run_convert(args) -> int:
    import shutil

    from alignkit.errors import AlignkitError
    from alignkit.fsutil import atomic_directory
    from alignkit.models.builtin import BUILTIN_MODELS
    from alignkit.models.convert import convert_gguf
    from alignkit.models.loading import resolve_model_path

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        raise AlignkitError(f"{dst} already exists; pass --overwrite to replace it")
    if args.src in BUILTIN_MODELS:
        cached = resolve_model_path(args.src)  # converts into the cache once; later calls copy it
        with atomic_directory(dst, overwrite=args.overwrite) as tmp:
            shutil.copytree(cached, tmp, dirs_exist_ok=True)
    else:
        src = Path(args.src)
        if not src.is_file() or src.suffix.lower() != ".gguf":
            raise AlignkitError(
                f"{src}: expected a .gguf file or one of: {', '.join(BUILTIN_MODELS)}"
            )
        convert_gguf(src, dst, overwrite=args.overwrite)
    print(f"wrote {dst}")
    return 0
