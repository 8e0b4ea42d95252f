"""Per-game training config in the bucket, beside the game's spec: what the training service trains it with.

``games/{game_id}/training.json`` (written by the operator, ``rlplatform games configure``), all keys optional::

    {"algorithm": "DQN", "hyperparameters": {"batch_size": 64}, "publish_every_updates": 500, "learners": 2,
     "seed": 0, "canary_share": 0.1, "retired": false}

No document: the defaults (the game's default algorithm with its default hyperparameters). ``retired``: the
service stops the game's trainer and starts none (its data and models stay). ``learners``: data-parallel learner
actors (``Algorithm.build_learner_group``); 0, the default, runs the learner inside the trainer's own actor.
``seed``: the trainer's sampling and network initialisation (a restarted trainer resumes its weights regardless).
``canary_share``: of the game's clients, the share that plays each new version as the release candidate
(``rlplatform.release``); 0, the default, makes every new version the stable one at once.
"""

from __future__ import annotations

import json
from typing import Any

from rlplatform.games import GameSpec
from rlplatform.infra import aws
from rlplatform.train.algorithms import AlgorithmConfigError, algorithm_class
from rlplatform.train.trainer import TrainerConfig, checked_config
from rlplatform_client.games import GAMES_PREFIX

KEYS = ("algorithm", "hyperparameters", "publish_every_updates", "learners", "seed", "canary_share", "retired")
# Learner actors per game: each takes one CPU of the cluster.
MAX_LEARNERS = 64


def training_key(game_id: str) -> str:
    return f"{GAMES_PREFIX}/{game_id}/training.json"


def read_training(bucket: str, game_id: str) -> dict[str, Any]:
    """The game's training document as stored ({} when there is none); ``AlgorithmConfigError`` when it is not
    JSON. Checked by ``training_config``, not here: a bad one is reported, not hidden."""
    body = aws.object_or_none(bucket, training_key(game_id))
    if body is None:
        return {}
    try:
        return json.loads(body)
    except ValueError as exc:
        raise AlgorithmConfigError(f"s3://{bucket}/{training_key(game_id)}: not JSON: {exc}") from None


def write_training(bucket: str, spec: GameSpec, doc: dict[str, Any]) -> TrainerConfig:
    """Check ``doc`` against the game (``training_config``), then store it; returns what it trains with."""
    cfg = training_config(spec, doc, training_key(spec.game_id))
    put_training(bucket, spec.game_id, doc)
    return cfg


def put_training(bucket: str, game_id: str, doc: dict[str, Any]) -> None:
    """Store ``doc`` as it is: for a game whose spec is not known yet (its clients will declare it), which the
    service checks once they have."""
    body = json.dumps(doc, indent=2, sort_keys=True).encode()
    aws.s3_client().put_object(Bucket=bucket, Key=training_key(game_id), Body=body)


def training_config(spec: GameSpec, doc: object, where: str) -> TrainerConfig:
    """The ``TrainerConfig`` a training document gives ``spec``'s game; ``AlgorithmConfigError`` naming the field
    (unknown algorithm, one unfit for the game, an unknown or impossible hyperparameter)."""
    doc = checked_config(doc, where, KEYS)
    publish_every = doc.get("publish_every_updates")
    if publish_every is not None and (type(publish_every) is not int or publish_every < 1):
        raise AlgorithmConfigError(f"{where}: publish_every_updates: must be an int >= 1, got {publish_every!r}")
    learners = doc.get("learners", 0)
    if type(learners) is not int or not 0 <= learners <= MAX_LEARNERS:
        raise AlgorithmConfigError(f"{where}: learners: must be an int in [0, {MAX_LEARNERS}], got {learners!r}")
    share = doc.get("canary_share", 0.0)
    if type(share) not in (int, float) or not 0 <= share <= 1:
        raise AlgorithmConfigError(f"{where}: canary_share: must be a number in [0, 1], got {share!r}")
    if type(doc.get("seed", 0)) is not int:
        raise AlgorithmConfigError(f"{where}: seed: must be an int, got {doc['seed']!r}")
    if type(doc.get("retired", False)) is not bool:
        raise AlgorithmConfigError(f"{where}: retired: must be true or false, got {doc['retired']!r}")
    try:
        algorithm = algorithm_class(spec, doc.get("algorithm"))
        algorithm(spec, doc.get("hyperparameters", {}))  # checks every hyperparameter against the game
    except AlgorithmConfigError as exc:
        raise AlgorithmConfigError(f"{where}: {exc}") from None
    return TrainerConfig(
        game_id=spec.game_id,
        algorithm=algorithm.name,
        hyperparameters=doc.get("hyperparameters", {}),
        publish_every_updates=publish_every,
        learners=learners,
        seed=doc.get("seed", 0),
        canary_share=float(share),
    )


def retired(doc: dict[str, Any]) -> bool:
    return doc.get("retired") is True
