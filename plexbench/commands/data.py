"""`plexbench data prepare NAME...` and `plexbench data info NAME`."""

from __future__ import annotations

from plexbench.commands import DATA_DIR_HELP


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets and show what the registry knows about them")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    data_sub.required = True

    prep = data_sub.add_parser(
        "prepare", help="prepare datasets into the TFDS data dir (once; a second run does nothing)",
        description="Prepare datasets into the TFDS data dir. NAME is a dataset, a family "
                    "(e.g. fashion_mnist_corrupted) or a quoted glob ('cifar10_corrupted/snow_*').")
    prep.add_argument("names", nargs="+", metavar="NAME")
    prep.add_argument("--data-dir", help=DATA_DIR_HELP)
    prep.add_argument("--manual-dir", help="folder with manually downloaded files (ImageNet tars) for TFDS")
    prep.set_defaults(func=run_prepare)

    info = data_sub.add_parser("info", help="registry entry of a dataset, with example counts when prepared")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--data-dir", help=DATA_DIR_HELP)
    info.add_argument("--fingerprint", action="store_true", help="also print each split's content hash")
    info.set_defaults(func=run_info)


def run_prepare(args) -> int:
    from plexbench import paths
    from plexbench.data.prepare import prepare
    from plexbench.data.registry import expand_names
    from plexbench.progress import Timer

    names = expand_names(args.names)
    data_dir = paths.data_dir(args.data_dir)
    done, skipped = [], []
    with Timer() as total:
        for name in names:
            with Timer() as t:
                did = prepare(name, data_dir, manual_dir=args.manual_dir)
            (done if did else skipped).append(name)
            print(f"{name}: {'prepared in %.1f s' % t.seconds if did else 'already prepared, nothing to do'}")
    if not done:
        print(f"nothing to do: {len(skipped)} dataset(s) already prepared in {data_dir}")
    else:
        print(f"prepared {len(done)} dataset(s) in {data_dir} in {total.seconds:.1f} s"
              + (f"; {len(skipped)} already prepared" if skipped else ""))
    return 0


def run_info(args) -> int:
    from plexbench import paths
    from plexbench.data.registry import DATASETS, FAMILIES, get_dataset, version_dir

    data_dir = paths.data_dir(args.data_dir)
    if args.name in FAMILIES and args.name not in DATASETS:
        return _family_info(args.name, data_dir)
    info = get_dataset(args.name)
    folder = version_dir(info, data_dir)
    lines = [
        f"name:        {info.name}",
        f"description: {info.description or '-'}",
        f"tfds name:   {info.tfds_name}" + (f" (version {info.version})" if info.version else ""),
        f"builder:     {info.builder or 'TFDS ' + info.builder_name}",
        f"embedded:    {'yes' if info.embedded else 'no'}",
        f"classes:     {info.num_classes}" + _names_suffix(info, data_dir),
        (f"text:        features {', '.join(info.text.features)}; label rule {info.text.label_rule}; "
         f"label tokens {', '.join(info.text.label_tokens) if info.text.label_tokens else '-'}" if info.is_text
         else f"image shape: {_shape(info.image_shape)}"),
        f"preprocess:  {info.default_preprocess}",
    ]
    if info.soft_label:
        lines.append(f"soft label:  {info.soft_label}")
    if info.corruption:
        lines.append(f"corruption:  {info.corruption}, severity {info.severity}")
    lines.append(f"prepared:    {folder if folder else 'no (data dir ' + str(data_dir) + ')'}")
    if folder is None:
        lines.append(f"to prepare:  plexbench data prepare {info.name} --data-dir {data_dir} ({info.prepare_hint})")
    lines.append("splits:")
    lines += _split_lines(info, data_dir, prepared=folder is not None, fingerprint=args.fingerprint)
    print("\n".join(lines))
    return 0


def _names_suffix(info, data_dir) -> str:
    from plexbench.data.load import class_names

    names = class_names(info.name, data_dir)
    if not names:
        return " (names come with the prepared data)"
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
    return f" ({shown})"


def _shape(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def _split_lines(info, data_dir, *, prepared: bool, fingerprint: bool) -> list[str]:
    from plexbench.data import load

    lines = []
    for role, split in info.splits.items():
        line = f"  {role:<10} {split}"
        if prepared:
            rng = load.split_range(info.name, role, data_dir)
            line += f"  {rng.size:,} examples ({rng.tfds_spec()})"
            if fingerprint:
                line += f"  sha256 {load.dataset_fingerprint(info.name, role, data_dir)}"
        lines.append(line)
    return lines


def _family_info(family: str, data_dir) -> int:
    from plexbench.data.registry import FAMILIES, get_dataset, version_dir

    members = [get_dataset(n) for n in FAMILIES[family]]
    ready = [m.name for m in members if version_dir(m, data_dir) is not None]
    corruptions = sorted({m.corruption for m in members}, key=[m.corruption for m in members].index)
    first = members[0]
    print("\n".join([
        f"family:      {family} ({len(members)} datasets: {len(corruptions)} corruptions x severities 1-5)",
        f"names:       {family}/<corruption>_<severity>, e.g. {first.name}",
        f"corruptions: {', '.join(corruptions)}",
        "splits:      " + ", ".join(f"{r}={s}" for r, s in first.splits.items()),
        f"prepared:    {len(ready)}/{len(members)} in {data_dir}",
        f"to prepare:  plexbench data prepare {family} --data-dir {data_dir} ({first.prepare_hint})",
    ]))
    return 0
