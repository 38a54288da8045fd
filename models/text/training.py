"""Train the text CNN, with TF-IDF + linear baselines on the same split.

Messages are split once, stratified by label and seeded, into train / validation (early
stopping) / test (reported only). The split is reproducible from the checkpoint: it stores
the seed, the fractions and a hash of the data file (see ``models.text.evaluation``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harstream.models.text import network
from harstream.models.text.data import (
    TextEncoder,
    Vocabulary,
    clean,
    file_digest,
    length_for,
    read_labelled_texts,
    stratified_split,
)
from harstream.models.text.evaluation import text_report

log = logging.getLogger(__name__)


@dataclass
class TextTrainConfig:
    """Everything a training run depends on; stored in the checkpoint's metadata."""

    data: str
    model: str = "kim"
    epochs: int = 30
    batch_size: int = 50
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    patience: int = 5
    embed_dim: int = 100
    embeddings: str | None = None
    min_count: int = 2
    max_len: int | None = None
    char_len: int | None = None
    split_seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    version: str = field(default_factory=lambda: dt.date.today().strftime("%Y.%m.%d"))


BASELINES = {
    "tfidf-words-svm": "word 1-2-gram TF-IDF + linear SVM",
    "tfidf-chars-svm": "character 2-5-gram TF-IDF + linear SVM",
}


def baselines(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    test_labels: Sequence[str],
    classes: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """TF-IDF + linear SVMs (scikit-learn) fitted on the CNN's training messages only.

    Same cleaning as the CNN (HTML removed, lower-cased); n-gram ranges were chosen on the
    validation messages among the usual settings, scikit-learn defaults otherwise.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    features = {
        "tfidf-words-svm": {"ngram_range": (1, 2)},
        "tfidf-chars-svm": {"analyzer": "char_wb", "ngram_range": (2, 5)},
    }
    pipelines = {
        name: make_pipeline(
            TfidfVectorizer(preprocessor=clean, sublinear_tf=True, **kwargs), LinearSVC()
        )
        for name, kwargs in features.items()
    }
    reports = {}
    for name, pipe in pipelines.items():
        pipe.fit(list(train_texts), list(train_labels))
        reports[name] = text_report(list(test_labels), pipe.predict(list(test_texts)), classes)
        reports[name]["model"] = BASELINES[name]
    return reports


def build_encoder(config: TextTrainConfig, train_texts: Sequence[str]) -> TextEncoder:
    """Vocabularies and lengths from the training messages only."""
    words = Vocabulary.build(train_texts, min_count=config.min_count)
    max_len = config.max_len or length_for(train_texts)
    if config.model != "hybrid":
        return TextEncoder(words, max_len)
    chars = Vocabulary.build(train_texts, min_count=config.min_count, level="chars")
    char_len = config.char_len or length_for(train_texts, level="chars")
    return TextEncoder(words, max_len, chars, char_len)


def train_text(
    config: TextTrainConfig, out: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Train, test on held-out messages, fit the baselines, save checkpoint and curves."""
    import jax
    import optax

    from harstream.models import training
    from harstream.models.text import checkpoint, glove

    if config.model not in network.CLI_NAMES:
        raise ValueError(
            f"unknown model {config.model!r}; expected one of {sorted(network.CLI_NAMES)}"
        )
    texts, labels = read_labelled_texts(config.data)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"{config.data}: need at least two labels, found {classes}")
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[lab] for lab in labels], np.int32)
    split = stratified_split(labels, config.split_seed, config.test_fraction, config.val_fraction)
    part_texts = {k: [texts[i] for i in getattr(split, k)] for k in ("train", "val", "test")}
    encoder = build_encoder(config, part_texts["train"])
    vocab = encoder.words
    arch = network.CLI_NAMES[config.model]
    arch_config = {
        "vocab_size": len(vocab),
        "num_classes": len(classes),
        "embed_dim": config.embed_dim,
    }
    if encoder.chars is not None:
        arch_config.update(char_vocab_size=len(encoder.chars), word_len=encoder.max_len)
    model = network.build(arch, arch_config)
    if min(encoder.max_len, encoder.char_len or encoder.max_len) < network.min_length(model):
        raise ValueError("max_len/char_len is shorter than the widest convolution")
    log.info(
        "%d messages: train %d, validation %d, test %d; vocabulary %d, max_len %d, char_len %d",
        len(texts), len(split.train), len(split.val), len(split.test), len(vocab),
        encoder.max_len, encoder.char_len,
    )  # fmt: skip
    ids = {k: encoder.encode_all(v) for k, v in part_texts.items()}
    params = network.init_params(model, encoder.width, seed=config.seed)
    found = None
    if config.embeddings:
        matrix, found = glove.embedding_matrix(
            config.embeddings, vocab.tokens, config.embed_dim, seed=config.seed
        )
        params = {**params, "embed": {"embedding": matrix}}
        log.info("pretrained vectors for %d of %d vocabulary words", found, len(vocab))

    optimizer = optax.adamw(config.lr, weight_decay=config.weight_decay)
    validate = training.classification_eval(
        lambda p, x: model.apply({"params": p}, x), ids["val"], y[split.val]
    )
    result = training.fit(
        training.classifier_loss(model, config.label_smoothing),
        params,
        (ids["train"], y[split.train]),
        optimizer,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        validate=validate,
        monitor="val_loss",
        mode="min",
        patience=config.patience,
        progress=progress,
        desc=arch,
    )
    params = jax.device_get(result.params)
    forward = jax.jit(network.make_forward(model))
    probs = training.predict_batches(forward, params, ids["test"])
    test_report = text_report(y[split.test], probs.argmax(-1), classes)
    base = baselines(
        part_texts["train"],
        [labels[i] for i in split.train],
        part_texts["test"],
        [labels[i] for i in split.test],
        classes,
    )
    meta = {
        "name": arch,
        "version": config.version,
        "classes": classes,
        "text": encoder.meta(),
        "training": {
            "config": asdict(config),
            "data": str(config.data),
            "data_sha256": file_digest(config.data),
            "split": {
                "method": "stratified",
                "seed": config.split_seed,
                "test_fraction": config.test_fraction,
                "val_fraction": config.val_fraction,
                "messages": {k: len(getattr(split, k)) for k in ("train", "val", "test")},
            },
            "pretrained_vectors_found": found,
            **result.record(),
        },
        "metrics": {"validation_loss": result.best_value, "test": test_report, "baselines": base},
    }
    out = Path(out)
    checkpoint.save(out, arch, arch_config, params, meta)
    training.save_curves(
        result.history, out / "curves.png", title=f"{arch} on {Path(config.data).name}",
        best_epoch=result.best_epoch,
    )  # fmt: skip
    return meta
