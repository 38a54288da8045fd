"""Text family: architectures, text preparation, GloVe vectors, checkpoints, shipped model."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harstream.cli import main
from harstream.families import default_checkpoint
from harstream.models import checkpoint
from harstream.models.har.network import count_params
from harstream.models.text import checkpoint as text_checkpoint
from harstream.models.text import data as text_data
from harstream.models.text import glove, network
from harstream.models.text.evaluation import evaluate_text, held_out


def _shapes(model, max_len=20):
    return jax.eval_shape(lambda: network.init_params(model, max_len))


def _random_params(model, max_len):
    """Parameters of the right shapes without compiling the initialiser (fast)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), _shapes(model, max_len)
    )


def test_kim_cnn_parameter_count_and_output_shape():
    model = network.KimCNN(vocab_size=1000, num_classes=2)
    params = _shapes(model)
    # embeddings + convolutions of widths 3/4/5 x 100 maps + dense 300 -> 2
    assert count_params(params) == 100 * 1000 + (300 + 400 + 500) * 100 + 300 + 300 * 2 + 2
    ids = jax.ShapeDtypeStruct((3, 20), jnp.int32)
    assert jax.eval_shape(network.make_forward(model), params, ids).shape == (3, 2)


def test_stack_cnn_parameter_count_and_short_messages():
    model = network.StackCNN(vocab_size=500, num_classes=3)
    convs = (5 * 100 * 128 + 128) + 2 * (5 * 128 * 128 + 128)
    assert count_params(_shapes(model, 59)) == 100 * 500 + convs + 128 * 128 + 128 + 128 * 3 + 3
    ids = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    assert jax.eval_shape(network.make_forward(model), _shapes(model, 8), ids).shape == (2, 3)


def test_hybrid_cnn_reads_words_then_characters():
    model = network.HybridCNN(vocab_size=300, char_vocab_size=60, word_len=20, num_classes=2)
    params = _shapes(model, 20 + 50)
    kim = count_params(_shapes(network.KimCNN(vocab_size=300, num_classes=2)))
    chars = 60 * 32 + (3 + 4 + 5) * 32 * 100 + 300
    assert count_params(params) == kim + chars + 300 * 2  # the dense layer sees 600 features
    ids = jax.ShapeDtypeStruct((3, 70), jnp.int32)
    assert jax.eval_shape(network.make_forward(model), params, ids).shape == (3, 2)


def test_encoder_with_characters_round_trip():
    train = ["Call NOW", "call me", "now now"]
    words = text_data.Vocabulary.build(train, min_count=1)
    chars = text_data.Vocabulary.build(train, min_count=2, level="chars")
    encoder = text_data.TextEncoder(words, 4, chars, 10)
    ids = encoder.encode("call &amp; NOW")
    assert ids.shape == (14,) and encoder.width == 14
    assert words.decode(ids[:4]) == ["call", "<oov>", "now"]
    # characters seen twice in training: a l n o w and space; case is kept
    assert "".join(c if c != "<oov>" else "?" for c in chars.decode(ids[4:])) == "?all ? ???"
    again = text_data.TextEncoder.from_meta({"text": json.loads(json.dumps(encoder.meta()))})
    np.testing.assert_array_equal(again.encode("call &amp; NOW"), ids)


def test_padding_does_not_change_kim_prediction():
    model = network.KimCNN(vocab_size=50, num_classes=2, embed_dim=8, maps=4)
    params = _random_params(model, 30)
    ids = np.zeros((1, 30), np.int32)
    ids[0, :6] = [5, 9, 2, 7, 3, 11]
    short = ids[:, :12]
    forward = jax.jit(network.make_forward(model))
    probs = np.asarray(forward(params, ids))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, forward(params, short), rtol=1e-5)


def test_html_tags_and_entities_removed():
    assert text_data.strip_html("<p>Free &amp; <b>easy</b> &lt;#&gt;</p>") == "Free & easy <#>"
    assert text_data.clean("  CALL <i>Now</i>\n&pound;5 ") == "call now £5"


def test_tokenizer_keeps_words_symbols_and_number_shapes():
    tokens = text_data.tokenize("WINNER!! Call 09061701461, claim £900 &amp; it's 4 u")
    assert tokens == [
        "winner", "!", "!", "call", "<num11>", "claim", "£", "<num3>", "&", "it's", "4", "u",
    ]  # fmt: skip


def test_vocabulary_round_trip_oov_padding_and_truncation():
    train = ["the cat sat", "the cat ran", "a dog sat"]
    vocab = text_data.Vocabulary.build(train, min_count=2)
    assert vocab.tokens[:2] == [text_data.PAD, text_data.OOV]
    assert set(vocab.tokens[2:]) == {"the", "cat", "sat"}
    ids = vocab.encode("The cat sat", 5)
    assert ids.dtype == np.int32 and ids.tolist()[3:] == [0, 0]
    assert vocab.decode(ids) == ["the", "cat", "sat"]
    assert vocab.decode(vocab.encode("the zebra", 4)) == ["the", text_data.OOV]
    assert vocab.decode(vocab.encode("the cat sat the cat", 2)) == ["the", "cat"]
    meta = {"text": json.loads(json.dumps(text_data.TextEncoder(vocab, 5).meta()))}
    np.testing.assert_array_equal(text_data.texts_to_ids(["The cat sat"], meta)[0], ids)


def test_meta_from_another_tokenizer_is_refused():
    meta = {"text": text_data.TextEncoder(text_data.Vocabulary(["<pad>", "<oov>"]), 8).meta()}
    meta["text"]["tokenizer"] = "someone-else-v9"
    with pytest.raises(ValueError, match="tokenizer"):
        text_data.TextEncoder.from_meta(meta)


def test_reads_sms_layout_and_csv_with_article_column_names(tmp_path):
    sms = tmp_path / "sms.txt"
    sms.write_text("ham\tsee you at 5\nspam\tWIN a prize &lt;now&gt;\n\n")
    assert text_data.read_labelled_texts(sms) == (
        ["see you at 5", "WIN a prize &lt;now&gt;"],
        ["ham", "spam"],
    )
    csv_file = tmp_path / "messages.csv"
    csv_file.write_text('id,Message,Class\n1,"hello, there\nfriend",ham\n2,FREE entry,spam\n')
    texts, labels = text_data.read_labelled_texts(csv_file)
    assert texts == ["hello, there\nfriend", "FREE entry"] and labels == ["ham", "spam"]
    bad = tmp_path / "bad.csv"
    bad.write_text("body,kind\nhi,ham\n")
    with pytest.raises(ValueError, match="text column"):
        text_data.read_labelled_texts(bad)


def test_glove_reader_and_embedding_matrix(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("the 0.1 0.2 0.3\ncat -1 0 1\nunused 9 9 9\n")
    vectors, dim = glove.read_vectors(path, {"the", "cat", "dog"})
    assert dim == 3 and sorted(vectors) == ["cat", "the"]
    vocab = ["<pad>", "<oov>", "the", "cat", "dog"]
    matrix, found = glove.embedding_matrix(path, vocab, 3, seed=1)
    assert matrix.shape == (5, 3) and found == 2
    np.testing.assert_allclose(matrix[2], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(matrix[3], [-1, 0, 1])
    assert not matrix[0].any() and matrix[4].any()  # padding zero, missing word random
    with pytest.raises(ValueError, match="--embed-dim 3"):
        glove.embedding_matrix(path, vocab, 100)
    path.write_text("the 0.1 0.2 0.3\ncat -1 0\n")
    with pytest.raises(ValueError, match=":2: 2 values"):
        glove.read_vectors(path)


@pytest.fixture(scope="session")
def text_predictor():
    return text_checkpoint.predictor_from_checkpoint(default_checkpoint("text"), max_batch=4)


def test_shipped_text_model_classifies_obvious_messages(text_predictor):
    texts = [
        "URGENT! You have won a £1000 cash prize. Call 09061701461 now to claim, T&C apply",
        "Ok, I'll see you at home tonight. Bring the keys please",
    ]
    ids = text_checkpoint.texts_to_ids(texts, text_predictor.meta)
    assert ids.shape == (2, *text_predictor.item_shape) and ids.dtype == np.int32
    probs = text_predictor.predict(ids)
    assert [text_predictor.labels[i] for i in probs.argmax(-1)] == ["spam", "ham"]


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    vocab = text_data.Vocabulary(["<pad>", "<oov>", "hello", "world"])
    config = {"vocab_size": 4, "num_classes": 2, "embed_dim": 8}
    params = _random_params(network.build("text-cnn", config), 10)
    meta = {
        "name": "tiny",
        "version": "0",
        "classes": ["a", "b"],
        "text": text_data.TextEncoder(vocab, 10).meta(),
    }
    text_checkpoint.save(tmp_path / "ok", "text-cnn", config, params, meta)
    _, loaded, got = text_checkpoint.load(tmp_path / "ok")
    np.testing.assert_array_equal(loaded["embed"]["embedding"], params["embed"]["embedding"])
    assert got["input_shape"] == [10]
    meta["text"] = text_data.TextEncoder(text_data.Vocabulary(["<pad>", "<oov>", "x"]), 10).meta()
    text_checkpoint.save(tmp_path / "bad", "text-cnn", config, params, meta)
    with pytest.raises(checkpoint.CheckpointError, match="vocabulary of 3 tokens"):
        text_checkpoint.load(tmp_path / "bad")


def test_evaluate_cli_reports_mcc(tmp_path, capsys):
    data = tmp_path / "sms.txt"
    data.write_text(
        "spam\tWINNER! Claim your free £500 prize now, call 09061701461\n"
        "ham\tare we still on for lunch tomorrow?\n"
        "ham\tsorry, I'll call you later\n"
    )
    out = tmp_path / "report.json"
    assert main(["evaluate", "text", "--data", str(data), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion", "mcc"} <= set(report)
    assert report["messages"] == 3 and report["accuracy"] == 1.0 and report["mcc"] == 1.0
    assert "mcc" in capsys.readouterr().out


def test_shipped_model_meets_target_on_held_out_messages(shared_data, text_predictor):
    data = shared_data / "sms-spam" / "SMSSpamCollection"
    texts, labels = text_data.read_labelled_texts(data)
    keep = held_out(text_predictor.meta, data, labels)
    assert len(keep) == text_predictor.meta["training"]["split"]["messages"]["test"]
    kept = [texts[i] for i in keep], [labels[i] for i in keep]
    report = evaluate_text(text_predictor.predict, text_predictor.meta, *kept)
    assert report["accuracy"] >= 0.985 and report["mcc"] >= 0.93


def test_train_cli_with_pretrained_vectors_then_held_out_evaluation(tmp_path, capsys):
    rng = np.random.default_rng(0)
    spam = ["win cash now", "free prize call", "claim your reward txt", "urgent win free"]
    ham = ["see you at lunch", "running late sorry", "call me later ok", "dinner at home"]
    lines = [f"spam\t{rng.choice(spam)} {rng.integers(100, 999)}" for _ in range(30)]
    lines += [f"ham\t{rng.choice(ham)} &amp; more" for _ in range(60)]
    data = tmp_path / "sms.txt"
    data.write_text("\n".join(lines) + "\n")
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("".join(f"{w} {' '.join(['0.5'] * 8)}\n" for w in ("win", "see", "cash")))
    out = tmp_path / "model"
    args = ["train", "text", "--data", str(data), "--out", str(out), "--epochs", "2"]
    args += ["--embeddings", str(vectors), "--embed-dim", "8", "--batch-size", "16"]
    assert main([*args, "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["training"]["pretrained_vectors_found"] == 3
    assert set(meta["metrics"]["baselines"]) == {"tfidf-words-svm", "tfidf-chars-svm"}
    assert (out / "curves.png").is_file() and "text-cnn" in capsys.readouterr().out
    evaluate = ["evaluate", "text", "--data", str(data), "--model", str(out), "--held-out"]
    data.write_text(data.read_text() + "ham\tone more\n")
    assert main(evaluate) == 2  # another file: its held-out part is unknown
