"""`plexbench predict` (run a model over a split into the prediction store) and `plexbench store`.

    plexbench predict --model plex-mini --dataset fashion_mnist --split test --out preds.npz
    plexbench store ls
    plexbench store export KEY --out preds.npz
    plexbench store verify [KEY]

JAX and TensorFlow are imported inside the handlers, so `plexbench --help` stays fast.
"""

from __future__ import annotations

import sys

from plexbench.commands import DATA_DIR_HELP, STORE_HELP
from plexbench.errors import PlexbenchError


def register(sub) -> None:
    p = sub.add_parser("predict", help="run a model over a dataset split into the prediction store",
                       description="Run a model over a dataset split; store per-example per-member logits, "
                                   "pre-logits, labels and ids (reused on a rerun, resumed after an interruption).")
    p.add_argument("--model", required=True,
                   help="registry model name (plexbench list models) or package.module:function, which is "
                        "imported (the working directory first) and run, returning (flax_module, params[, info]) "
                        "(docs/your-model.md)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="ViT-Plex .npz checkpoint or T5X checkpoint directory (default: the model's zoo weights; "
                        "released ones: gs://plex-paper/, docs/checkpoints.md)")
    p.add_argument("--vocab", metavar="PATH", help="T5 models: the T5 SentencePiece vocabulary "
                   "(cc_all.32000.100extra/sentencepiece.model; or set $PLEXBENCH_T5_VOCAB)")
    p.add_argument("--readout", choices=("average", "paper"), default="average",
                   help="T5 ensembles: 'average' stores member logits (probabilities averaged, default); 'paper' "
                        "stores the reference code's logsumexp of raw member logits as one row (spec §9)")
    p.add_argument("--dataset", required=True, help="dataset name (plexbench list datasets)")
    p.add_argument("--split", default="test", help="split role (train/validation/test) or TFDS split string (default: test)")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size (rounded up to a multiple of the device count)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (outputs are stored as float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the heteroscedastic head's sampling (default 0)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--out", help="also write a prediction file (format v1, read by plexbench score)")
    p.add_argument("--no-pre-logits", action="store_true", help="do not store pre-logits (embeddings)")
    p.set_defaults(func=run_predict)

    s = sub.add_parser("store", help="list, export or verify prediction-store entries")
    ssub = s.add_subparsers(dest="store_command", metavar="ACTION", parser_class=type(s))
    ssub.required = True
    ls = ssub.add_parser("ls", help="list entries")
    ls.add_argument("--store", help=STORE_HELP)
    ls.set_defaults(func=run_store_ls)
    ex = ssub.add_parser("export", help="write an entry as a prediction file (format v1)")
    ex.add_argument("key", help="entry key or its first hex digits (>= 4), from 'plexbench store ls'")
    ex.add_argument("--out", required=True, help="prediction file to write (.npz)")
    ex.add_argument("--store", help=STORE_HELP)
    ex.set_defaults(func=run_store_export)
    ve = ssub.add_parser("verify", help="check every chunk of one or all entries against its checksum")
    ve.add_argument("key", nargs="?", help="entry key prefix (default: all entries)")
    ve.add_argument("--store", help=STORE_HELP)
    ve.set_defaults(func=run_store_verify)


def make_handle(model: str, checkpoint: str | None, *, vocab: str | None = None, readout: str = "average"):
    """Registry name -> handle_from_registry; "module:function" -> handle_from_callable."""
    from plexbench.inference import handle_from_callable, handle_from_registry

    if ":" in model:
        if checkpoint or vocab or readout != "average":
            raise PlexbenchError("--checkpoint, --vocab and --readout apply to registry models only")
        return handle_from_callable(model)
    from plexbench.models.registry import get_model

    if get_model(model).config.architecture != "t5":
        if vocab or readout != "average":
            raise PlexbenchError(f"--vocab and --readout apply to T5 models; '{model}' is a ViT")
        return handle_from_registry(model, checkpoint)
    return handle_from_registry(model, checkpoint, readout=readout, vocab=vocab)


def run_predict(args) -> int:
    from plexbench import fileio, paths
    from plexbench.inference import predict

    # Where results go is checked before anything is computed. The store may be read-only when
    # everything is in it already: a write into it fails at the entry lock, before computing.
    if args.out:
        fileio.check_output_file(args.out, "--out")
    paths.store_dir(args.store)
    handle = make_handle(args.model, args.checkpoint, vocab=args.vocab, readout=args.readout)
    entry = predict(handle, args.dataset, args.split, data_dir=args.data_dir, store_dir=args.store,
                    batch_size=args.batch_size, dtype=args.dtype, seed=args.seed,
                    with_pre_logits=not args.no_pre_logits)
    print(f"store entry {entry.key[:16]}: {entry.num_examples} examples at {entry.path}")
    if args.out:
        print(f"wrote {entry.export(args.out)}")
    return 0


def run_store_ls(args) -> int:
    from plexbench import paths
    from plexbench.inference.store import list_entries
    from plexbench.table import format_table

    root = paths.store_dir(args.store)
    rows = list_entries(root)
    print(format_table(rows) if rows else f"(no entries in {root})")
    return 0


def run_store_export(args) -> int:
    from plexbench import paths
    from plexbench.inference.store import find_entry

    from plexbench import fileio

    fileio.check_output_file(args.out, "--out")
    entry = find_entry(paths.store_dir(args.store), args.key)
    print(f"wrote {entry.export(args.out)}")
    return 0


def run_store_verify(args) -> int:
    """Exit 0 when every chunk matches its checksum; else list the damaged ones and exit 2."""
    from plexbench import paths
    from plexbench.inference import store as st

    root = paths.store_dir(args.store)
    entries = [st.find_entry(root, args.key)] if args.key else st.all_entries(root)
    bad = 0
    for entry in entries:
        records = [r for r in entry.manifest["chunks"] if r is not None]
        damaged = [r["file"] for r in records if not st.chunk_is_valid(entry.path, r)]
        state = "complete" if entry.complete else "partial"
        print(f"{entry.key[:16]} {state}: {len(records) - len(damaged)}/{entry.manifest['num_chunks']} chunks ok"
              + (f", damaged: {', '.join(damaged)}" if damaged else ""))
        bad += len(damaged)
    if bad:
        print(f"plexbench: error: {bad} damaged chunk(s); rerun the same predict to recompute them", file=sys.stderr)
        return 2
    return 0
