"""`nearline train-embeddings` and `nearline evaluate` (put on the group by app/tools/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from nearline_rec.tools.clitools import one_line_errors, settings


def fail(message: str) -> NoReturn:
    """An expected problem with the inputs: one line on stderr, exit 1."""
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(1)


_file = click.Path(dir_okay=False, path_type=Path)

_embedding_method = click.option(
    "--embedding-method",
    type=click.Choice(["ppmi-svd", "als", "bpr"]),
    default="ppmi-svd",
    show_default=True,
    help="Item vectors: PPMI + SVD of co-occurrence, or implicit's ALS / BPR "
    "(the embeddings extra).",
)


@click.command("train-embeddings")
@click.option("--ratings", required=True, type=_file, help="MovieLens ratings.csv.")
@click.option("--dim", default=32, show_default=True, type=click.IntRange(2, 4096))
@click.option("--out", required=True, type=_file, help="Item embeddings (item2vec text).")
@click.option("--users-out", type=_file, help="User embeddings for warm start (same format).")
@click.option(
    "--movies",
    type=_file,
    help="movies.csv: items no one liked get the mean vector of their genres.",
)
@click.option("--window", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--min-rating",
    default=3.5,
    show_default=True,
    type=click.FloatRange(0, 5),
    help="Ratings below this are not co-occurrence signal.",
)
@click.option("--seed", default=42, show_default=True, type=int)
@_embedding_method
@one_line_errors
def train_embeddings_cmd(
    ratings: Path,
    dim: int,
    out: Path,
    users_out: Path | None,
    movies: Path | None,
    window: int,
    min_rating: float,
    seed: int,
    embedding_method: str,
) -> None:
    """Learn item (and user) embeddings from a ratings file: co-occurrence PPMI + SVD, or
    implicit's ALS / BPR."""
    from nearline_rec.data.loaders import read_movies
    from nearline_rec.tools.quality.ratings import RatingTable
    from nearline_rec.tools.quality.train import (
        TrainConfig,
        TrainingError,
        train_embeddings,
        write_item2vec,
    )

    movie_list = read_movies(movies) if movies is not None else None
    table = RatingTable.read(ratings)
    if len(table) == 0:
        fail(f"{ratings}: no ratings")
    config = TrainConfig(
        method=embedding_method, dim=dim, window=window, min_rating=min_rating, seed=seed
    )
    try:
        emb = train_embeddings(table, config, movies=movie_list, progress=True)
    except TrainingError as exc:
        fail(f"{ratings}: {exc}")
    write_item2vec(out, emb.item_ids, emb.items)
    msg = f"wrote {len(emb.item_ids)} item vectors (dim {dim}) to {out}"
    if users_out is not None:
        write_item2vec(users_out, emb.user_ids, emb.users)
        msg += f", {len(emb.user_ids)} user vectors to {users_out}"
    click.echo(f"{msg} in {emb.info['seconds']:.1f}s from {len(table)} ratings")


@click.command("evaluate")
@click.option("--ratings", type=_file, help="MovieLens ratings.csv.")
@click.option("--movies", type=_file, help="MovieLens movies.csv.")
@click.option(
    "--plays",
    type=_file,
    help="Instead of ratings: user TAB item TAB weight (HetRec user_artists.dat), evaluated by"
    " a per-user random holdout with and without the friends channel (needs --relations).",
)
@click.option(
    "--relations",
    type=_file,
    help="With --plays: follower TAB followee pairs (HetRec user_friends.dat), read as"
    " `nearline load-relations` reads them.",
)
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="With --plays: share of each user's items held out.",
)
@click.option("--seed", default=42, show_default=True, type=int, help="With --plays: split seed.")
@click.option(
    "--readme",
    type=_file,
    help="With --plays: write the table into this README between its friends-eval markers.",
)
@click.option(
    "--embeddings",
    type=_file,
    help="Item embeddings to use (default: trained on the earlier part of the ratings).",
)
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--train-share",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Earliest share of ratings (by time) for training and warm-up; the rest is replayed.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0.5, 5),
    help="Ratings at or above this are positive events (default: the like threshold).",
)
@click.option(
    "--ablation/--no-ablation",
    default=True,
    show_default=True,
    help="Also score the pipeline without each recall channel (in the same replay).",
)
@click.option(
    "--ranker",
    "rankers",
    multiple=True,
    type=_file,
    help="Another ranking model (JSON linear or ONNX) to score on the same candidates; repeat.",
)
@click.option("--e2e", is_flag=True, help="Also replay through a real worker on Kafka and Redis.")
@click.option(
    "--e2e-batch-size",
    default=1,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Worker micro-batch size in --e2e (1 = a list after every event, as in-process).",
)
@click.option(
    "--e2e-partitions",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="user-events partitions in --e2e (1 = the worker sees the in-process order).",
)
@click.option(
    "--out",
    "out_dir",
    default=Path("quality-report"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for quality.json and quality.png.",
)
@_embedding_method
@one_line_errors
def evaluate_cmd(
    ratings: Path | None,
    movies: Path | None,
    plays: Path | None,
    relations: Path | None,
    holdout: float,
    seed: int,
    readme: Path | None,
    embeddings: Path | None,
    k: int,
    train_share: float,
    threshold: float | None,
    ablation: bool,
    rankers: tuple[Path, ...],
    e2e: bool,
    e2e_batch_size: int,
    e2e_partitions: int,
    out_dir: Path,
    embedding_method: str,
) -> None:
    """Replay the later part of a ratings file through the pipeline and baselines."""
    from nearline_rec.ranking import load_ranker
    from nearline_rec.tools.quality.evaluate import (
        EvalConfig,
        EvaluationError,
        ablation_lines,
        evaluate,
        prepare,
        table_lines,
        write_report,
    )

    s = settings()
    if plays is not None or relations is not None:
        _evaluate_friends(s, plays, relations, k, holdout, seed, out_dir, readme)
        return
    if ratings is None or movies is None:
        fail("give --ratings and --movies (or --plays and --relations)")
    config = EvalConfig(
        k=k,
        train_share=train_share,
        threshold=s.embedding.like_threshold if threshold is None else threshold,
        progress=True,
        ablation=ablation,
        rankers=tuple(load_ranker(p) for p in rankers),
        embedding_method=embedding_method,
    )
    try:
        prepared = prepare(s, ratings, movies, embeddings, config)
        report, replayed = evaluate(s, prepared, config)
        if e2e:
            from nearline_rec.tools.quality.e2e import E2EConfig, run_e2e

            report["e2e"] = run_e2e(
                s,
                prepared,
                replayed,
                config,
                E2EConfig(batch_size=e2e_batch_size, partitions=e2e_partitions),
                in_process=report["methods"],
            )
    except EvaluationError as exc:
        fail(str(exc))
    json_path, png_path = write_report(report, out_dir)
    ev = report["events"]
    click.echo(
        f"{ev['train']} events of warm-up, {ev['test']} replayed, {ev['scored']} positive "
        f"events scored ({ev['skipped_cold_users']} of users without history skipped)"
    )
    click.echo("\n".join(table_lines(report)))
    if report.get("ablation"):
        click.echo("\n".join(ablation_lines(report)))
    if e2e:
        agreement = report["e2e"]["agreement"]
        click.echo(f"e2e vs in-process: {json.dumps(agreement)}")
    if png_path is None:
        click.echo(
            f"wrote {json_path} (no quality.png: pip install 'nearline-rec[plot]')", err=True
        )
    else:
        click.echo(f"wrote {json_path} and {png_path}", err=True)
    sys.stdout.flush()


@click.command("train-ranker")
@click.option("--ratings", required=True, type=_file, help="MovieLens ratings.csv.")
@click.option("--movies", required=True, type=_file, help="MovieLens movies.csv.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for ranker.onnx and ranker.card.json.",
)
@click.option(
    "--train-share",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Earliest share of ratings read (evaluate's train part); the rest is never read.",
)
@click.option(
    "--threshold",
    default=3.5,
    show_default=True,
    type=click.FloatRange(0.5, 5),
    help="Ratings at or above this are positive events.",
)
@click.option(
    "--kind",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "lightgbm", "logistic"]),
    help="Learner; auto keeps the better on the held-out events.",
)
@click.option("--seed", default=42, show_default=True, type=int)
@_embedding_method
@one_line_errors
def train_ranker_cmd(
    ratings: Path,
    movies: Path,
    out_dir: Path,
    train_share: float,
    threshold: float,
    kind: str,
    seed: int,
    embedding_method: str,
) -> None:
    """Fit a ranker to replayed ratings through the real recall channels; export to ONNX."""
    from nearline_rec.tools.quality.evaluate import EvaluationError
    from nearline_rec.tools.quality.learn import LearnConfig, train_ranker

    config = LearnConfig(
        train_share=train_share,
        threshold=threshold,
        kind=kind,
        seed=seed,
        progress=True,
        embedding_method=embedding_method,
    )
    try:
        out = train_ranker(settings(), ratings, movies, out_dir, config)
    except EvaluationError as exc:
        fail(str(exc))
    card = out["card_doc"]
    for name, m in card["offline_metrics"]["models"].items():
        click.echo(
            f"held-out {name}: NDCG@10 {m['ndcg@10']:.4f}, HitRate@10 {m['hit_rate@10']:.4f}"
        )
    click.echo(
        f"wrote {out['model']} ({card['kind']}, version {card['version']}) and {out['card']} "
        f"from {card['examples']['groups']} events in {out['seconds']:.1f}s"
    )


def _evaluate_friends(
    s: object,
    plays: Path | None,
    relations: Path | None,
    k: int,
    holdout: float,
    seed: int,
    out_dir: Path,
    readme: Path | None,
) -> None:
    from nearline_rec.data.loaders import read_pairs, read_plays
    from nearline_rec.tools.quality.evaluate import EvaluationError
    from nearline_rec.tools.quality.friends_eval import (
        HoldoutConfig,
        evaluate_holdout,
        table_lines,
        write_readme,
    )

    if plays is None or relations is None:
        fail("--plays and --relations go together")
    cfg = HoldoutConfig(k=k, holdout=holdout, seed=seed, progress=True)
    try:
        report = evaluate_holdout(
            s,  # type: ignore[arg-type]
            read_plays(plays),
            read_pairs(relations),
            cfg,
            sources={"plays": plays.name, "relations": relations.name},
        )
        if readme is not None:
            write_readme(report, readme)
    except EvaluationError as exc:
        fail(str(exc))
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "friends-holdout.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    click.echo(
        f"{report['users_scored']} users scored, {report['held_out']} held-out items,"
        f" {report['friend_edges']} friend edges"
    )
    click.echo("\n".join(table_lines(report)))
    click.echo(f"wrote {json_path}" + (f" and the table in {readme}" if readme else ""), err=True)


COMMANDS = (train_embeddings_cmd, evaluate_cmd, train_ranker_cmd)
