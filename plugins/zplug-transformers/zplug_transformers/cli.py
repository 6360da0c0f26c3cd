"""``zplug explain-text``: relevance per token of a Hugging Face model, in the terminal, as HTML and JSON.

Registered through ``zplug_register_commands``; this module imports neither torch nor
``transformers`` until the command runs, so ``zplug --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from zplug.errors import InputError, SpecError, ZplugError
from zplug_transformers.render import TokenScores, dumps, page, terminal

EPILOG = """\
examples:
  zplug explain-text --model ./my-gpt2 --text "The capital of France is"
  zplug explain-text --model ./my-gpt2 --file prompts.txt --preset cp_lrp --out relevance
  zplug explain-text --model ./bert-sst2 --text "a gripping, funny film" --target positive

The model is a local folder written by save_pretrained() (config.json, weights, tokenizer), or the name
of a model already in the local Hugging Face cache: zplug never downloads anything, and never runs code
that comes with a model (trust_remote_code stays off).
"""

DTYPES = ("float32", "float64", "bfloat16", "float16")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zplug explain-text``."""
    parser = subparsers.add_parser(
        "explain-text",
        help="explain a language model's next token (or a text classifier's class), token by token",
        description="Explain a Hugging Face model's prediction for each prompt: relevance per input token, printed "
        "in colour and written as a self-contained HTML page and JSON per prompt.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("input")
    group.add_argument("--text", action="append", default=[], metavar="TEXT", help="a prompt; repeatable")
    group.add_argument("--file", metavar="FILE",
                       help="a UTF-8 text file with one prompt per line (empty lines skipped)")
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, metavar="FOLDER|NAME",
                       help="a save_pretrained() folder, or a model name in the local Hugging Face cache")
    group.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="compute in this precision (default float32; float16/bfloat16 halve the memory)")
    group = parser.add_argument_group("method")
    group.add_argument("--preset", default="attnlrp", metavar="NAME|FILE",
                       help="attnlrp (default), cp_lrp, a preset file, or 'gradient' for gradient x input")
    group.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a preset parameter (epsilon=1e-6); repeatable")
    group.add_argument("--target", metavar="TOKEN|ID|CLASS",
                       help="the next token to explain (a token string or id), or a classifier's class (label or "
                       "index); default: the model's prediction")
    group.add_argument("--strict", action="store_true", help="fail if an operation is not covered by a rule")
    group = parser.add_argument_group("output")
    group.add_argument("--out", default="results", metavar="DIR",
                       help="output folder for the HTML and JSON files (default: results); it must be missing or "
                       "empty, unless --overwrite")
    group.add_argument("--overwrite", action="store_true",
                       help="write into a folder that holds files: replace those with this run's names, keep the rest")
    group.add_argument("--no-files", action="store_true", help="print only; write no HTML or JSON")
    group.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                       help="colour tokens in the terminal (auto: when printing to a terminal and NO_COLOR is unset)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar on stderr (default: on a terminal, for runs over a second)")
    parser.set_defaults(run=run)


# -- inputs --------------------------------------------------------------------------------------
def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of ``--text`` and ``--file``, in that order; one-line errors for missing or bad input."""
    prompts = list(args.text)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise InputError(f"--file '{path}' does not exist or is not a file")
        try:
            with path.open("rb") as stream:
                data = stream.read(_MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise InputError(f"--file '{path}': {exc.strerror or exc}") from None
        if len(data) > _MAX_FILE_BYTES:
            raise InputError(f"--file '{path}' is larger than {_MAX_FILE_BYTES // 2**20} MiB; split it")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"--file '{path}' is not UTF-8 text (byte {exc.start})") from None
        prompts.extend(line for line in text.splitlines() if line.strip())
    if not prompts:
        raise SpecError("give a prompt with --text TEXT or a file of prompts with --file FILE")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise SpecError(f"--text number {empty[0] + 1} is empty; give some text")
    return prompts


_MAX_FILE_BYTES = 16 * 2**20


def parse_target(text: str | None) -> Any:
    """``"42"`` -> 42 (a token id or class index); any other string stays a string; ``None`` stays None."""
    if text is None:
        return None
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    return text


# -- the model -----------------------------------------------------------------------------------
def load_model(spec: str, dtype: str):
    """Load ``(model, tokenizer)`` from a local folder or the local cache, in eval mode, without running its code."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # its notes on configs are not the user's concern here
    options = {"local_files_only": True, "trust_remote_code": False}
    try:
        config = transformers.AutoConfig.from_pretrained(spec, **options)
    except (OSError, ValueError) as exc:
        if os.path.isdir(spec):
            raise InputError(f"--model '{spec}': {_first_line(exc)}") from None
        raise InputError(
            f"--model '{spec}': cannot read its config.json ({_first_line(exc)}); give a folder written by "
            "save_pretrained(), or a model name already in the local Hugging Face cache (zplug never downloads)"
        ) from None
    cls = _model_class(config, spec)
    try:
        model = cls.from_pretrained(spec, torch_dtype=getattr(torch, dtype), **options)
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec, **options)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"--model '{spec}': {_first_line(exc)}") from None
    return model.eval(), tokenizer


def _model_class(config: Any, spec: str) -> type:
    """The model class its config names (a class of ``transformers`` only), else a causal language model."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, str(name), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    if config.model_type in {"bert", "roberta", "distilbert", "electra"}:
        return transformers.AutoModelForMaskedLM
    return transformers.AutoModelForCausalLM


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- running -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Explain every prompt; print each, and write ``prompt-NNN.html``/``.json`` files and ``index.html``."""
    from zplug.cli._output import OutputFolder
    from zplug.cli._progress import ProgressBar
    from zplug.cli.presets import parse_params

    prompts = read_prompts(args)
    params = parse_params(args.param)
    target = parse_target(args.target)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    folder = None
    names = [f"prompt-{i + 1:03d}" for i in range(len(prompts))]
    if not args.no_files:
        folder = OutputFolder(Path(args.out), args.overwrite)
        folder.check()
        folder.check_targets([f"{n}.{kind}" for n in names for kind in ("html", "json")] + ["index.html"])
    model, tokenizer = load_model(args.model, args.dtype)
    preset = None if args.preset == "gradient" else args.preset
    results = []
    bar = ProgressBar(len(prompts), "prompts", enabled=args.progress)
    try:
        for name, prompt in zip(names, prompts):
            scores = explain_prompt(model, tokenizer, prompt, target, preset, args.strict, params)
            results.append(scores)
            print(terminal(scores, color=color), flush=True)
            if folder is not None:
                _write(folder, f"{name}.html", _page([scores], prompt))
                _write(folder, f"{name}.json", dumps(scores))
            bar.update()
        if folder is not None:
            _write(folder, "index.html", _page(results, "all prompts"))
    except ZplugError:
        _say_written(folder)
        raise
    finally:
        bar.close()
        if folder is not None:
            folder.close()
    if folder is not None:
        print(f"wrote {len(folder.written)} files to {folder.root}/ (index.html shows every prompt)", file=sys.stderr)
    return 0


def explain_prompt(model, tokenizer, prompt: str, target: Any, preset: Any, strict: bool, params: dict):
    """Explain one prompt and return its :class:`~zplug_transformers.render.TokenScores`."""
    from zplug_transformers.tokens import explain_tokens

    result = explain_tokens(model, prompt, target, tokenizer=tokenizer, preset=preset, strict=strict, **params)
    keep = result.attention_mask[0].bool()
    ids = result.token_ids[0][keep].tolist()
    relevance = result.relevance[0][keep].double().tolist()
    tokens = [tokenizer.decode([i]) for i in ids]
    target_id = int(result.target[0])
    if result.position is None:  # a classifier: its label
        explained = result.target_tokens[0] if result.target_tokens else str(target_id)
    else:  # the next token as text; an id the tokenizer does not know (a model's spare rows) by number
        explained = tokenizer.decode([target_id]) if tokenizer.convert_ids_to_tokens(target_id) is not None else ""
        explained = explained or f"[id {target_id}]"
    return TokenScores(
        tokens=tokens, relevance=relevance, target=explained, logit=float(result.logit[0]), text=prompt,
        preset=str(preset or "gradient x input"),
    )


def _page(prompts, title: str) -> str:
    return page(prompts, title=f"zplug: relevance per token ({title})")


def _write(folder, name: str, text: str) -> None:
    data = text.encode("utf-8")
    folder.write(name, lambda file: file.write(data))


def _say_written(folder) -> None:
    if folder is not None and folder.written:
        listed = ", ".join(folder.written[:4]) + (" ..." if len(folder.written) > 4 else "")
        print(f"zplug: files written before the error, in {folder.root}/: {listed}", file=sys.stderr)


__all__ = ("EPILOG", "add_parser", "explain_prompt", "load_model", "read_prompts", "run")
