"""`plexbench model info NAME [--checkpoint PATH]` and `plexbench zoo train NAME`."""

from __future__ import annotations

import json

from plexbench.commands import DATA_DIR_HELP


def register(sub) -> None:
    p = sub.add_parser("model", help="show a registered model: config, parameters, FLOPs, checkpoint check")
    model_sub = p.add_subparsers(dest="model_command", metavar="ACTION", parser_class=type(p))
    model_sub.required = True
    info = model_sub.add_parser(
        "info", help="config, parameter count and matmul FLOPs per example of a model",
        description="Print a model's config, parameter count and matmul FLOPs per example. With "
                    "--checkpoint (or for zoo models, their shipped weights) the file is read and "
                    "every key and shape is checked against the config.")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--checkpoint", metavar="PATH",
                      help="a checkpoint to validate against the config (.npz for ViTs, a T5X directory for T5 models)")
    info.add_argument("--vocab", metavar="PATH",
                      help="T5 models: the SentencePiece vocabulary to check against the config (the official T5 "
                           "vocabulary, gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run_info)

    z = sub.add_parser("zoo", help="train the embedded zoo models (Fashion-MNIST; fortunes for the T5 ones)")
    zoo_sub = z.add_subparsers(dest="zoo_command", metavar="ACTION", parser_class=type(z))
    zoo_sub.required = True
    train = zoo_sub.add_parser(
        "train", help="train a zoo model from its seed; writes NAME.npz and the model card NAME.json",
        description="Train a zoo model from its recipe and seed: plex-mini, det-mini, plex-mini-fmnist6, "
                    "det-mini-fmnist6 on Fashion-MNIST (plexbench.training.zoo; a killed run started again resumes "
                    "from its last saved state, every 200 steps); t5-plex-mini, t5-det-mini on the embedded fortunes "
                    "texts (a T5X directory NAME/ and NAME.json). Use --out plexbench/models/zoo_weights to refresh "
                    "the shipped weights.")
    train.add_argument("name", metavar="NAME")
    train.add_argument("--data-dir", help=DATA_DIR_HELP)
    train.add_argument("--out", metavar="DIR", help="output folder (default: ~/.cache/plexbench/zoo_weights)")
    train.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps (smoke runs)")
    train.set_defaults(func=run_zoo_train)


def model_info(name: str, checkpoint: str | None = None, vocab: str | None = None) -> dict:
    """What `model info` prints, as a dict; validates the checkpoint when one is given or shipped
    (and, for T5 models, the vocabulary when given)."""
    from plexbench.models.checkpoint import load_params
    from plexbench.models.config import param_count
    from plexbench.models.flops import flops_per_example
    from plexbench.models.registry import get_model

    entry = get_model(name)
    path = checkpoint or (str(entry.checkpoint) if entry.checkpoint and entry.checkpoint.exists() else None)
    info = {
        "name": entry.name,
        "family": entry.family,
        "description": entry.description,
        "preprocess": entry.preprocess,
        "config": entry.config.to_dict(),
        "param_count": param_count(entry.config),
        "flops_per_example": flops_per_example(entry.config),
        "checkpoint": None,
    }
    if entry.config.architecture == "t5":
        return _t5_info(entry, info, path, vocab)
    if vocab:
        from plexbench.errors import PlexbenchError

        raise PlexbenchError(f"--vocab applies to T5 models; '{name}' is a ViT")
    if path:
        from plexbench import fileio

        load_params(entry.config, path)  # raises a one-line PlexbenchError on any problem
        info["checkpoint"] = {"path": path, "sha256": fileio.sha256_file(path), "valid": True}
    return info


def _t5_info(entry, info: dict, path: str | None, vocab: str | None) -> dict:
    """model_info for a T5 model: T5X directory and vocabulary checks."""
    from plexbench.errors import PlexbenchError
    from plexbench.models.t5x_checkpoint import directory_sha256, load_t5x_params

    c = entry.config
    info["label_tokens"] = list(c.label_tokens)
    info["vocab"] = None
    if vocab:
        from plexbench.models.tokenizer import Tokenizer

        tok = Tokenizer(_read_file(vocab), name="t5")
        if tok.vocab_size > c.vocab_size:
            raise PlexbenchError(f"vocabulary {vocab} has {tok.vocab_size} ids, the model's embedding {c.vocab_size} rows")
        names = [f"<extra_id_{k}>" for k in range(len(c.label_tokens))]
        ids = [tok.token_id(n) for n in names]
        if tuple(ids) != c.label_tokens:
            raise PlexbenchError(f"vocabulary {vocab} puts {', '.join(names)} at {ids}, the model reads {list(c.label_tokens)}")
        info["vocab"] = {"path": vocab, "pieces": tok.num_pieces, "sentinels": tok.extra_ids, "sha256": tok.sha256,
                         "label_tokens": dict(zip(names, ids))}
    if path:
        load_t5x_params(c, path)  # raises a one-line PlexbenchError on any problem
        info["checkpoint"] = {"path": path, "sha256": directory_sha256(path), "valid": True}
    return info


def _read_file(path: str) -> bytes:
    from pathlib import Path

    from plexbench.errors import PlexbenchError

    p = Path(path).expanduser()
    if not p.is_file():
        raise PlexbenchError(f"vocabulary file not found: {p}")
    return p.read_bytes()


def run_info(args) -> int:
    info = model_info(args.name, args.checkpoint, args.vocab)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"{info['name']} ({info['family']}): {info['description']}")
    print(f"preprocess: {info['preprocess']}")
    print("config:")
    for k, v in info["config"].items():
        print(f"  {k}: {v}")
    print(f"parameters: {info['param_count']:,}")
    flops = info["flops_per_example"]
    print(f"matmul FLOPs per example: {flops['total']:,} ({flops['total'] / 1e9:.3f} GFLOPs)")
    for k, v in flops.items():
        if k != "total" and v:
            print(f"  {k}: {v:,}")
    if "label_tokens" in info:
        print(f"label tokens: {info['label_tokens'] or 'unknown (this task cannot be read out)'}")
        v = info["vocab"]
        if v:
            print(f"vocabulary: {v['path']} ({v['pieces']:,} pieces + {v['sentinels']} sentinels): "
                  + ", ".join(f"{k} = {i}" for k, i in v["label_tokens"].items()))
    ck = info["checkpoint"]
    print(f"checkpoint: {ck['path']} (sha256 {ck['sha256'][:16]}...): keys and shapes match the config, every value is finite"
          if ck else "checkpoint: none given (pass --checkpoint PATH to validate one; the released Plex "
                     "checkpoints are in gs://plex-paper/, see docs/checkpoints.md)")
    return 0


def run_zoo_train(args) -> int:
    from plexbench.training.zoo import train_zoo_model
    from plexbench.progress import summary_line

    if args.max_steps is not None and args.max_steps < 1:
        from plexbench.errors import PlexbenchError

        raise PlexbenchError(f"--max-steps must be >= 1, got {args.max_steps}")
    from plexbench import paths

    from plexbench import fileio
    from plexbench.models.zoo_t5 import T5_RECIPES, train_t5_zoo_model

    out = fileio.check_output_dir(args.out or paths.cache_root() / "zoo_weights", "--out")
    language = args.name in T5_RECIPES
    train = train_t5_zoo_model if language else train_zoo_model
    card = train(args.name, args.data_dir, out, max_steps=args.max_steps)
    t, test = card["training"], card["test"]
    print(summary_line(f"trained {card['name']}", t["steps"], t["wall_time_s"], unit="steps"))
    print(f"test ({card['data']['num_test']} examples): accuracy {test['accuracy']:.4f}, "
          f"NLL {test['nll']:.4f}, ECE {test['ece']:.4f}")
    if language:
        print(f"bag-of-words baseline: accuracy {card['baseline_bag_of_words']['accuracy']:.4f}; "
              f"the model {card['versus_baseline']}")
        ck = card["checkpoint"]
        print(f"wrote {out}/{ck['directory']}/ (T5X, {ck['bytes']:,} bytes) and {card['name']}.json")
        return 0
    print(f"wrote {out}/{card['checkpoint']['file']} ({card['checkpoint']['bytes']:,} bytes) and {card['name']}.json")
    return 0
